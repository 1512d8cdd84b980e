"""The ceiling: a bare WSGI app under waitress, with ClubBot's server settings, answering 200."""
import sys

import waitress


def app(environ, start_response):
    environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    body = b'{"ok": true}'
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


if __name__ == "__main__":
    waitress.serve(app, host="127.0.0.1", port=int(sys.argv[1]), threads=4, ident="bare",
                   max_request_body_size=1024 * 1024, channel_timeout=30, _quiet=True)

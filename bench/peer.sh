#!/usr/bin/env bash
# ClubBot's webhook server beside the peer kit's references, in one compare run:
#   bash bench/peer.sh [compare.py options]      (about 2 minutes on 2 cores)
# Needs the kit's requirements (aiohttp) in a venv of its own: see ../shared/peer/README.md.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
kit=${PEER_KIT:-$here/../shared/peer}
venv=${PEER_VENV:-${TMPDIR:-/tmp}/peer-venv}
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q -r "$kit/requirements.txt"
fi
py="$here/.venv/bin/python"
env_vars="BOT_TOKEN=123456:PEER-bot-token-SECRET CLUB_CHAT_IDS=-1001 PLANS=plan0:30d:2.6:USDT,plan1:90d:7.5:USDT,plan2:7d:0.5:TON"
cd "$kit"
exec "$venv/bin/python" compare.py --only hello,waitress_ref_1t,aiohttp_sync,aiohttp_thread \
  --target-name clubbot \
  --target-cmd "cd '$here' && exec env $env_vars CRYPTO_PAY_TOKEN={token} DATABASE_PATH={db} WEBHOOK_PORT={port} LOG_FILE={dir}/clubbot.log '$py' webhook_server.py" \
  --target-url "http://127.0.0.1:{port}/webhook/cryptobot" \
  --target-seed-cmd "'$py' '$here/bench/peer_seed.py' {db} {n} {k}" \
  --target-check-cmd "'$py' '$here/bench/peer_check.py' {db} {lo} {hi}" "$@"

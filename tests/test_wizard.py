"""`python clubbot.py setup`: the wizard, run unattended (flags, --yes) and at a terminal whose
answers are typed by the test, against the fake Telegram and Crypto Pay; then a real ClubBot
started from the .env it wrote sells a plan."""
import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest
from builders import bot_status, buttons, callback_query, message, person
from conftest import ADMIN, BOT_TOKEN, CLUB_CHAT, PAY_TOKEN, ROOT, free_port, start_process, wait_for

import config as config_module
import files
import wizard
from clubbot import COMMANDS, build_parser
from config import SETTINGS
from db import Database
from updates import ALLOWED_UPDATES

CLUBBOT = str(ROOT / "clubbot.py")
SECRETS = (BOT_TOKEN, BOT_TOKEN.split(":")[1], PAY_TOKEN, PAY_TOKEN.split(":")[1])
OTHER_CHAT = -1001000000002
CODE = "Owner-Code_0123456"  # the one-time code of the link setup prints, in these tests
STRANGER = person(6666, "en", "Stranger", "stranger")


@pytest.fixture
def here(tmp_path, monkeypatch, telegram, cryptopay):
    """An empty folder as the working directory; the API URLs in the environment point at the
    fakes, as they would at a local Bot API server (ClubBot and setup read them the same way)."""
    monkeypatch.chdir(tmp_path)
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TELEGRAM_API_URL", telegram.url)
    monkeypatch.setenv("CRYPTO_PAY_API_URL", cryptopay.api_url)
    return tmp_path


@pytest.fixture(autouse=True)
def start_code(monkeypatch):
    """The code of the link that makes its opener the first admin: CODE, for the owner to send."""
    monkeypatch.setattr(wizard, "new_start_code", lambda: CODE)


@pytest.fixture(autouse=True)
def keyboard(monkeypatch):
    """The terminal: each prompt (input or getpass) takes the next of `answers` (an exception class
    is raised instead, as Ctrl-C raises KeyboardInterrupt); with none left the input is closed."""
    typed = SimpleNamespace(answers=[], prompts=[])

    def read(prompt: str = "") -> str:
        typed.prompts.append(prompt)
        if not typed.answers:
            raise EOFError
        answer = typed.answers.pop(0)
        if isinstance(answer, type) and issubclass(answer, BaseException):
            raise answer()
        return answer

    monkeypatch.setattr("builtins.input", read)
    monkeypatch.setattr(wizard.getpass, "getpass", read)
    return typed


def setup(capsys, *flags: str) -> SimpleNamespace:
    """Run `clubbot.py setup FLAGS` in this process: its exit code and what it printed, in which
    no token ever stands whole."""
    args = build_parser().parse_args(["setup", *flags])
    code = COMMANDS["setup"].run(None, args)
    captured = capsys.readouterr()
    for secret in SECRETS:
        assert secret not in captured.out + captured.err
    return SimpleNamespace(code=code, out=captured.out, err=captured.err)


def unattended(*extra: str, bot: str = BOT_TOKEN, pay: str = PAY_TOKEN) -> list[str]:
    return ["--yes", "--bot-token", bot, "--pay-token", pay, "--network", "testnet", "--wait", "2s", *extra]


def owner_says_start(telegram) -> None:
    """The owner opens the link setup prints: their Telegram app sends /start with its code."""
    telegram.push_update(message(f"/start {CODE}", sender=person(ADMIN, "en", "Owner", "owner")))


def make_database(path, network: str) -> None:
    """A database ClubBot has run with on `network` (it records that at its first start)."""
    path.parent.mkdir(exist_ok=True)
    database = Database(path)
    database.migrate()
    database.claim_network(network)
    database.close()


def settings(path) -> dict[str, str]:
    return config_module.read_env_file(path)


def test_it_takes_an_owner_from_nothing_to_a_plan_sold(here, telegram, cryptopay, capsys):
    owner_says_start(telegram)
    telegram.push_update(bot_status(CLUB_CHAT, "Club"))
    result = setup(capsys, *unattended("--wait", "5s"))
    assert result.code == 0, result.out + result.err
    [link] = [line for line in result.out.splitlines() if "?start=" in line]  # one line, easy to find
    assert link == f"  https://t.me/club_test_bot?start={CODE}"
    assert f"(or send /start {CODE} to @club_test_bot)" in result.out
    assert "Waiting for /start from you in @club_test_bot (up to 5 seconds)..." in result.out
    assert "ok: Owner (@owner) (id 9000) is the first admin" in result.out
    assert f'ok: "Club" (id {CLUB_CHAT}, supergroup): @club_test_bot can invite and remove members' in result.out
    assert "All well." in result.out and "No domain yet" in result.out
    assert result.out.rstrip().endswith("python clubbot.py run")
    assert telegram.updates == []  # confirmed: the running bot does not answer them again
    # ...with the updates ClubBot asks for, which Telegram keeps until told others: not setup's fewer.
    assert json.loads(telegram.called("getUpdates")[-1]["allowed_updates"]) == ALLOWED_UPDATES
    written = config_module.load({}, env_file=here / ".env")
    assert (written.admin_ids, written.club_chat_ids, written.crypto_pay_network) == ({ADMIN}, (CLUB_CHAT,), "testnet")
    assert written.webhook_url == ""
    assert str(written.database_path).endswith("data/clubbot-testnet.db")  # test payments kept apart
    # ClubBot, started from that .env (the fakes' URLs and a quick poller from the environment):
    process = start_process([CLUBBOT], {"TELEGRAM_API_URL": telegram.url, "CRYPTO_PAY_API_URL": cryptopay.api_url,
                                        "WEBHOOK_PORT": str(free_port()), "POLL_INTERVAL": "1s"}, here)
    try:
        telegram.push_update(message("/start"))
        assert "Welcome" in wait_for(lambda: telegram.messages_to(501), timeout=15)[0]["text"]
        telegram.push_update(callback_query("plan:month"))
        [invoice] = wait_for(lambda: cryptopay.called("createInvoice"))
        cryptopay.pay(1001)  # no domain, no webhook: the poller finds the payment
        [activated] = wait_for(lambda: [m for m in telegram.messages_to(501) if "active until" in m["text"]],
                               timeout=15)
        assert invoice["asset"] == "USDT" and invoice["amount"] == "5"
        assert any(button.get("url", "").startswith("https://t.me/+fake") for button in buttons(activated))
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err


def test_the_file_is_readable_by_the_owner_only_and_read_alike_by_clubbot(here, telegram, capsys):
    old_umask = os.umask(0o022)
    try:
        result = setup(capsys, *unattended("--admin-id", str(ADMIN), "--chat-id", str(CLUB_CHAT),
                                           "--plans", "month:30d:5:USDT:One month,trial:3d:0:USDT"))
    finally:
        os.umask(old_umask)
    assert result.code == 0, result.err
    path = here / ".env"
    assert stat.S_IMODE(path.stat().st_mode) == files.PRIVATE_FILE
    assert [p.name for p in here.iterdir()] == [".env"]  # no temporary file left beside it
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    # Unquoted KEY=VALUE lines, nothing systemd's EnvironmentFile= would read otherwise.
    assert all(wizard.UNSAFE.search(line) is None for line in lines)
    assert f"BOT_TOKEN={BOT_TOKEN}" in lines and "PLANS=month:30d:5:USDT:One month,trial:3d:0:USDT" in lines
    written = config_module.load({}, env_file=path)
    assert [(p.id, p.title) for p in written.plans] == [("month", "One month"), ("trial", None)]
    assert "month: 30d, 5 USDT (One month)" in result.out and "trial: 3d, free, once per member" in result.out


def test_it_names_the_missing_right_and_takes_the_chat_once_it_is_given(here, telegram, capsys):
    owner_says_start(telegram)
    telegram.push_update(bot_status(CLUB_CHAT, "Club", can_restrict_members=False))
    telegram.push_update(bot_status(CLUB_CHAT, "Club"))  # the owner gave the right
    result = setup(capsys, *unattended())
    assert result.code == 0, result.err
    assert f'In "Club" (id {CLUB_CHAT}, supergroup), @club_test_bot: cannot ban users.' in result.out
    assert 'To fix it: give @club_test_bot the right "Ban Users".' in result.out
    assert "Waiting for the fix, as Telegram reports it (up to 2 seconds)..." in result.out
    assert settings(here / ".env")["CLUB_CHAT_IDS"] == str(CLUB_CHAT)


def test_a_chat_the_bot_joined_without_rights_is_named_and_the_wait_for_its_fix_ends(here, telegram, capsys):
    owner_says_start(telegram)
    telegram.push_update(bot_status(CLUB_CHAT, "Club", status="member"))
    started = time.monotonic()
    result = setup(capsys, *unattended("--wait", "1s"))
    assert result.code == 1
    assert "To fix it: make @club_test_bot an administrator of the chat." in result.out
    assert result.err == (f'setup: in "Club" (id {CLUB_CHAT}, supergroup), @club_test_bot: it is not an admin, '
                          f"and no fix came within 1 second: fix it and run setup again\n")
    assert time.monotonic() - started < 10
    assert not (here / ".env").exists()


def test_a_chat_given_by_id_is_checked_and_the_right_it_lacks_named(here, telegram, capsys):
    telegram.chat_types[CLUB_CHAT] = "supergroup"
    telegram.bot_rights[CLUB_CHAT] = {"can_invite_users": False}
    result = setup(capsys, *unattended("--admin-id", str(ADMIN), "--chat-id", str(CLUB_CHAT), "--wait", "1s"))
    assert result.code == 1
    assert 'To fix it: give @club_test_bot the right "Invite Users via Link".' in result.out
    assert "@club_test_bot: cannot invite users, and no fix came within 1 second" in result.err
    assert not (here / ".env").exists()


def test_chats_given_by_id_are_all_checked_and_written_in_order(here, telegram, capsys):
    telegram.chat_titles[OTHER_CHAT] = "Second"
    result = setup(capsys, *unattended("--admin-id", f"{ADMIN},9001", "--chat-id", str(CLUB_CHAT),
                                       "--chat-id", str(OTHER_CHAT)))
    assert result.code == 0, result.err
    assert f'"Second" (id {OTHER_CHAT}, channel): @club_test_bot can invite and remove members' in result.out
    written = settings(here / ".env")
    assert (written["CLUB_CHAT_IDS"], written["ADMIN_IDS"]) == (f"{CLUB_CHAT},{OTHER_CHAT}", f"{ADMIN},9001")
    assert not telegram.called("getUpdates")  # nothing to wait for: the bot's updates are left alone


def test_a_chat_telegram_does_not_know_is_refused_with_one_line(here, telegram, capsys):
    telegram.fail("getChat", (400, {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"}))
    result = setup(capsys, *unattended("--admin-id", str(ADMIN), "--chat-id", str(CLUB_CHAT)))
    assert result.code == 1
    assert result.err == (f"setup: chat {CLUB_CHAT}: 400 Bad Request: chat not found "
                          f"(is @club_test_bot an administrator there?)\n")


@pytest.mark.parametrize("given, line", [
    ((), f"setup: nobody opened the link (/start {CODE}) in @club_test_bot within 1 second: run setup again, "
         "or give --admin-id YOUR_TELEGRAM_ID\n"),
    (("--admin-id", str(ADMIN)), "setup: @club_test_bot was not made an administrator of a chat within "
                                 "1 second: run setup again, or give --chat-id ID\n"),
], ids=["start", "chat"])
def test_each_wait_says_what_it_waits_for_and_ends_with_one_line(here, telegram, capsys, given, line):
    telegram.push_update(message("/start", ADMIN, date=int(time.time()) - 3600))  # before setup: not taken
    started = time.monotonic()
    result = setup(capsys, *unattended("--wait", "1s", *given))
    assert time.monotonic() - started < 10
    assert result.code == 1 and result.err == line
    assert "(up to 1 second)..." in result.out
    assert not (here / ".env").exists()


@pytest.mark.parametrize("flag, line", [
    ("--bot-token", "setup: --bot-token: Telegram refused the bot token 1234...rong (401 Unauthorized): "
                    "copy it again from @BotFather\n"),
    ("--pay-token", "setup: --pay-token: Crypto Pay refused the token 1234...rong on testnet (UNAUTHORIZED): "
                    "copy it again (a mainnet app's token does not work on testnet, nor the other way round)\n"),
], ids=["bot", "pay"])
def test_a_refused_token_is_one_line_and_nothing_is_written(here, capsys, flag, line):
    wrong = "1234567:this-token-is-wrong"
    tokens = {"bot": wrong} if flag == "--bot-token" else {"pay": wrong}
    result = setup(capsys, *unattended("--admin-id", str(ADMIN), "--chat-id", str(CLUB_CHAT), **tokens))
    assert result.code == 1 and result.err == line
    assert wrong not in result.out + result.err
    assert list(here.iterdir()) == []


def test_with_yes_a_missing_answer_names_its_flag(here, capsys):
    result = setup(capsys, "--yes", "--wait", "1s")
    assert result.code == 1
    assert result.err == "setup: --bot-token is needed (with --yes setup asks nothing)\n"
    assert list(here.iterdir()) == []


def test_at_the_terminal_a_refused_answer_is_asked_again(here, telegram, capsys, keyboard):
    owner_says_start(telegram)
    telegram.push_update(bot_status(CLUB_CHAT, "Club"))
    keyboard.answers += ["1234567:this-token-is-wrong", BOT_TOKEN,  # the bot token, twice
                         "",  # another club chat? no
                         "devnet", "testnet", PAY_TOKEN,  # the network, twice; Crypto Pay's token
                         "month:30d", "",  # the plans: refused, then the default
                         "http://club.example.com", "https://Club.Example.com/"]  # the domain, twice
    result = setup(capsys, "--wait", "2s")
    assert result.code == 0, result.out + result.err
    assert keyboard.prompts.count("Bot token: ") == 2
    assert "Telegram refused the bot token 1234...rong (401 Unauthorized)" in result.out
    assert "CRYPTO_PAY_NETWORK: 'devnet' is not one of: mainnet, testnet" in result.out
    assert "PLANS: plan 1 'month:30d': expected id:duration:amount:currency[:title]" in result.out
    assert "'http://club.example.com': CryptoBot calls only https:// URLs" in result.out
    written = settings(here / ".env")
    assert (written["WEBHOOK_URL"], written["PLANS"]) == ("https://club.example.com", wizard.DEFAULT_PLANS)
    assert "https://club.example.com/webhook/cryptobot" in result.out  # check: the URL to paste into @CryptoBot
    assert not keyboard.answers


def test_at_the_terminal_it_asks_after_each_chat_whether_there_is_another(here, telegram, capsys, keyboard):
    owner_says_start(telegram)
    telegram.push_update(bot_status(CLUB_CHAT, "Club"))
    telegram.push_update(bot_status(OTHER_CHAT, "News", chat_type="channel", can_restrict_members=False))
    keyboard.answers += [BOT_TOKEN, "y", "", "", PAY_TOKEN, "", ""]
    result = setup(capsys, "--wait", "2s")
    assert result.code == 0, result.out + result.err
    assert keyboard.prompts.count("Another club chat? (y/n) [n]: ") == 2
    # A channel's admins remove subscribers without a right of its own: none is missing there.
    assert f'ok: "News" (id {OTHER_CHAT}, channel): @club_test_bot can invite and remove members' in result.out
    assert settings(here / ".env")["CLUB_CHAT_IDS"] == f"{CLUB_CHAT},{OTHER_CHAT}"


def test_another_program_reading_the_updates_is_named_in_one_line(here, telegram, capsys):
    telegram.fail("getUpdates", (409, {"ok": False, "error_code": 409, "description":
                                       "Conflict: terminated by other getUpdates request"}))
    result = setup(capsys, *unattended())
    assert result.code == 1
    assert result.err == ("setup: Telegram: 409 Conflict: terminated by other getUpdates request: another program "
                          "reads @club_test_bot's updates (a running ClubBot: stop it while setup runs), or the "
                          "bot has a webhook set\n")


UNWRITABLE = "'#', quotes, backslashes, control characters and line separators cannot be written"


@pytest.mark.parametrize("flag, value, reason", [
    ("--plans", "month:30d:5:USDT:Best # deal", UNWRITABLE),
    ("--plans", 'month:30d:5:USDT:"Month"', UNWRITABLE),
    # Line breaks to other tools (str.splitlines() among them), though not to ClubBot and systemd:
    ("--plans", "month:30d:5:USDT:One\u2028month", UNWRITABLE),
    ("--plans", "month:30d:5:USDT:One\x85month", UNWRITABLE),
    ("--plans", "month:30d:5:USDT:One\x0cmonth", UNWRITABLE),
    ("--plans", "month:0d:5:USDT", "PLANS: plan 1 'month:0d:5:USDT': duration must be more than 0"),
    ("--domain", "club.example.com/pay", "give the domain alone, like club.example.com"),
    ("--domain", "localhost", "is not a domain name like club.example.com"),
    ("--network", "devnet", "CRYPTO_PAY_NETWORK: 'devnet' is not one of: mainnet, testnet"),
    ("--admin-id", "me", "ADMIN_IDS: 'me' is not a numeric id"),
    ("--wait", "forever", "'forever' is not a duration"),
])
def test_a_refused_flag_is_one_line_with_the_reason(here, capsys, flag, value, reason):
    result = setup(capsys, *unattended("--admin-id", str(ADMIN), "--chat-id", str(CLUB_CHAT), flag, value))
    assert result.code == 1
    assert result.err.startswith(f"setup: {flag}: ") and reason in result.err and result.err.count("\n") == 1
    assert not (here / ".env").exists()


def test_an_existing_env_is_not_replaced_without_asking(here, capsys, keyboard):
    path = here / ".env"
    path.write_text("BOT_TOKEN=keep-me\n")
    flags = unattended("--admin-id", str(ADMIN), "--chat-id", str(CLUB_CHAT))[1:]  # all but --yes
    result = setup(capsys, *flags)  # the input is closed: nobody to ask
    assert result.code == 1
    assert result.err == 'setup: no answer to "Replace .env when setup is done? (y/n)" (the input is closed): ' \
                         "give --yes\n"
    keyboard.answers.append("n")
    result = setup(capsys, *flags)
    assert result.code == 1 and result.err == "setup: .env is left as it is\n"
    assert path.read_text() == "BOT_TOKEN=keep-me\n"


def test_a_rerun_offers_every_value_again_and_keeps_the_other_lines(here, telegram, capsys, keyboard):
    owner_says_start(telegram)
    telegram.push_update(bot_status(CLUB_CHAT, "Club"))
    assert setup(capsys, *unattended("--domain", "club.example.com")).code == 0
    path = here / ".env"
    first = settings(path)
    with path.open("a") as stream:
        stream.write("# my own note\nLOG_LEVEL=DEBUG\n")
    before = path.read_text()
    path.chmod(0o644)  # as the owner may have left it
    keyboard.answers += ["y"] + [""] * 9  # replace it; then Enter at every question
    result = setup(capsys, "--wait", "1s")
    assert result.code == 0, result.out + result.err
    assert path.read_text() == before
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # its group may still read it; others no longer
    asked = "\n".join(keyboard.prompts)
    for secret in SECRETS:
        assert secret not in asked
    assert "Bot token [1234...part]: " in keyboard.prompts and "Crypto Pay API token [123...KEN]: " in keyboard.prompts
    assert f'Club chat ids (Enter keeps them; "wait" to take them from Telegram) [{CLUB_CHAT}]: ' in keyboard.prompts
    # Unattended, a flag changes its value alone:
    result = setup(capsys, "--yes", "--plans", "month:30d:7:USDT", "--domain", "")
    assert result.code == 0, result.err
    again = settings(path)
    assert again == {**first, "PLANS": "month:30d:7:USDT", "WEBHOOK_URL": "", "LOG_LEVEL": "DEBUG"}
    assert "# my own note" in path.read_text()


def test_ctrl_c_at_a_prompt_stops_it_and_writes_nothing(here, capsys, keyboard):
    keyboard.answers.append(KeyboardInterrupt)
    result = setup(capsys, "--wait", "1s")
    assert result.code == 130
    assert result.err == "\nsetup stopped; nothing was written\n"
    assert list(here.iterdir()) == []
    (here / ".env").write_text("BOT_TOKEN=old\n")
    keyboard.answers += ["y", KeyboardInterrupt]  # replace it? yes; then Ctrl-C at the bot token
    assert setup(capsys, "--wait", "1s").code == 130
    assert (here / ".env").read_text() == "BOT_TOKEN=old\n"


def test_ctrl_c_during_a_wait_stops_it_and_writes_nothing(here, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(wizard.apihelper, "get_updates", interrupted)
    result = setup(capsys, *unattended())
    assert result.code == 130 and result.err == "\nsetup stopped; nothing was written\n"
    assert "Waiting for /start from you" in result.out
    assert list(here.iterdir()) == []


def test_ctrl_c_while_the_file_is_written_leaves_no_part_of_it(here, capsys, monkeypatch):
    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "fsync", interrupted)
    result = setup(capsys, *unattended("--admin-id", str(ADMIN), "--chat-id", str(CLUB_CHAT)))
    assert result.code == 130 and "nothing was written" in result.err
    assert list(here.iterdir()) == []


def test_the_command_runs_from_an_empty_folder(here, telegram, cryptopay):
    environment = {"TELEGRAM_API_URL": telegram.url, "CRYPTO_PAY_API_URL": cryptopay.api_url}
    process = subprocess.run([sys.executable, CLUBBOT, "setup", *unattended("--admin-id", str(ADMIN),
                                                                              "--chat-id", str(CLUB_CHAT))],
                             cwd=here, env={"PATH": os.environ.get("PATH", ""), **environment},
                             capture_output=True, text=True, timeout=60)
    assert process.returncode == 0, process.stderr
    assert config_module.load({}, env_file=here / ".env").club_chat_ids == (CLUB_CHAT,)


def test_switching_to_mainnet_on_a_rerun_leaves_the_testnet_database_behind(here, telegram, cryptopay, capsys):
    given = ("--admin-id", str(ADMIN), "--chat-id", str(CLUB_CHAT))
    assert setup(capsys, *unattended(*given)).code == 0
    assert settings(here / ".env")["DATABASE_PATH"] == "data/clubbot-testnet.db"
    result = setup(capsys, *[a if a != "testnet" else "mainnet" for a in unattended(*given)])
    assert result.code == 0, result.out + result.err
    assert settings(here / ".env")["DATABASE_PATH"] == "data/clubbot.db"
    assert settings(here / ".env")["CRYPTO_PAY_NETWORK"] == "mainnet"


def test_the_start_code_is_new_each_run_and_fits_a_telegram_link(monkeypatch):
    monkeypatch.undo()  # the real codes, not the tests' CODE
    codes = {wizard.new_start_code() for _ in range(20)}
    assert len(codes) == 20
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{16,64}", code) for code in codes)


def test_only_the_links_start_makes_the_first_admin(here, telegram, capsys):
    # A stranger who found the bot gets there first, with and without a code of their own.
    telegram.push_update(message("/start", sender=STRANGER))
    telegram.push_update(message("/start guessed-code", sender=STRANGER))
    owner_says_start(telegram)
    result = setup(capsys, *unattended("--chat-id", str(CLUB_CHAT)))
    assert result.code == 0, result.out + result.err
    assert settings(here / ".env")["ADMIN_IDS"] == str(ADMIN)
    assert result.out.count("not taken: a /start without this link's code from Stranger (@stranger) (id 6666)") == 2
    assert "ok: Owner (@owner) (id 9000) is the first admin" in result.out
    assert not telegram.messages_to(STRANGER["id"])  # told nothing, least of all that they are the admin


def test_only_a_chat_an_admin_added_the_bot_to_is_taken(here, telegram, capsys):
    telegram.push_update(bot_status(OTHER_CHAT, "Not ours", by=STRANGER["id"]))
    telegram.push_update(bot_status(CLUB_CHAT, "Club"))  # by the admin
    result = setup(capsys, *unattended("--admin-id", str(ADMIN)))
    assert result.code == 0, result.out + result.err
    assert settings(here / ".env")["CLUB_CHAT_IDS"] == str(CLUB_CHAT)
    assert (f'not taken: "Not ours" (id {OTHER_CHAT}, supergroup): the change there was made by Owner (@m6666) '
            f"(id 6666), who is not an admin (step 2)") in result.out


def test_a_stranger_adding_the_bot_again_and_again_does_not_keep_setup_waiting(here, telegram, capsys):
    stop = threading.Event()

    def stranger():  # for 4 seconds, each time without a right: the wait for its fix would start again
        until = time.monotonic() + 4
        while not stop.wait(0.2) and time.monotonic() < until:
            telegram.push_update(bot_status(OTHER_CHAT, "Not ours", by=STRANGER["id"], can_restrict_members=False))

    thread = threading.Thread(target=stranger, daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        result = setup(capsys, *unattended("--admin-id", str(ADMIN), "--wait", "1s"))
    finally:
        stop.set()
        thread.join(5)
    assert time.monotonic() - started < 4
    assert result.code == 1
    assert result.err == ("setup: @club_test_bot was not made an administrator of a chat within 1 second: "
                          "run setup again, or give --chat-id ID\n")
    assert "To fix it" not in result.out


def test_a_rerun_on_testnet_keeps_the_database_in_use(here, telegram, capsys):
    # An owner on testnet whose .env names no database: theirs is the default one, and stays so.
    (here / ".env").write_text("CRYPTO_PAY_NETWORK=testnet\n")
    make_database(here / "data" / "clubbot.db", "testnet")
    result = setup(capsys, *unattended("--admin-id", str(ADMIN), "--chat-id", str(CLUB_CHAT)))
    assert result.code == 0, result.out + result.err
    assert "DATABASE_PATH" not in settings(here / ".env")
    assert str(config_module.load({}, env_file=here / ".env").database_path) == "data/clubbot.db"


def test_trying_testnet_leaves_the_mainnet_database_alone(here, telegram, capsys):
    make_database(here / "data" / "clubbot.db", "mainnet")
    result = setup(capsys, *unattended("--admin-id", str(ADMIN), "--chat-id", str(CLUB_CHAT)))
    assert result.code == 0, result.out + result.err
    assert settings(here / ".env")["DATABASE_PATH"] == "data/clubbot-testnet.db"


@pytest.mark.parametrize("kept, held, line", [
    # Back to mainnet from testnet's own database, where the default one holds testnet payments too.
    ("DATABASE_PATH=data/clubbot-testnet.db\n", "clubbot.db",
     "setup: the database data/clubbot.db holds testnet payments, and ClubBot does not use it for mainnet: "
     "set DATABASE_PATH=data/clubbot-mainnet.db (a database of its own) in .env, then run setup again\n"),
    # From testnet on the default database (no DATABASE_PATH) to mainnet.
    ("", "clubbot.db",
     "setup: the database data/clubbot.db holds testnet payments, and ClubBot does not use it for mainnet: "
     "set DATABASE_PATH=data/clubbot-mainnet.db (a database of its own) in .env, then run setup again\n"),
    # The owner's own database, named in .env.
    ("DATABASE_PATH=data/club.db\n", "club.db",
     "setup: the database data/club.db holds testnet payments, and ClubBot does not use it for mainnet: "
     "set DATABASE_PATH=data/clubbot-mainnet.db (a database of its own) in .env, then run setup again\n"),
], ids=["from-testnet-database", "from-default-database", "own-database"])
def test_switching_to_mainnet_onto_a_testnet_database_is_refused_with_the_way_out(here, telegram, capsys,
                                                                                  kept, held, line):
    path = here / ".env"
    path.write_text(f"CRYPTO_PAY_NETWORK=testnet\n{kept}")
    make_database(here / "data" / held, "testnet")
    result = setup(capsys, "--yes", "--bot-token", BOT_TOKEN, "--pay-token", PAY_TOKEN, "--network", "mainnet",
                   "--admin-id", str(ADMIN), "--chat-id", str(CLUB_CHAT))
    assert result.code == 1 and result.err == line
    assert path.read_text() == f"CRYPTO_PAY_NETWORK=testnet\n{kept}"


def test_a_rerun_keeps_lines_as_clubbot_reads_them_whatever_unicode_calls_a_line_break(here, telegram, capsys):
    given = unattended("--admin-id", str(ADMIN), "--chat-id", str(CLUB_CHAT))
    assert setup(capsys, *given).code == 0
    path = here / ".env"
    with path.open("a", encoding="utf-8") as stream:  # one line each, to ClubBot and systemd alike
        stream.write("# a note\u2028on one line\nLOG_LEVEL=debug\x85\u2029\n")
    before = path.read_text(encoding="utf-8")
    result = setup(capsys, *given)
    assert result.code == 0, result.out + result.err
    assert path.read_text(encoding="utf-8") == before


@pytest.mark.skipif(os.geteuid() != 0, reason="only root gives a file to another user")
def test_a_rerun_as_root_keeps_the_files_owner_and_group(here, telegram, capsys):
    given = unattended("--admin-id", str(ADMIN), "--chat-id", str(CLUB_CHAT))
    assert setup(capsys, *given).code == 0
    path = here / ".env"
    os.chown(path, 65534, 65534)  # the service's user, who alone reads it (0600)
    result = setup(capsys, *given)
    assert result.code == 0, result.out + result.err
    info = path.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (65534, 65534, files.PRIVATE_FILE)
    assert f".env written (readable by {wizard.user_name(65534)} only, as before)." in result.out
    assert "Note:" not in result.out


@pytest.mark.skipif(os.geteuid() != 0, reason="only root gives a file to another user")
def test_an_owner_that_cannot_be_kept_is_named(here, telegram, capsys, monkeypatch):
    given = unattended("--admin-id", str(ADMIN), "--chat-id", str(CLUB_CHAT))
    assert setup(capsys, *given).code == 0
    path = here / ".env"
    os.chown(path, 65534, 65534)

    def refused(*args):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(wizard.os, "fchown", refused)  # as under a file system that refuses it
    result = setup(capsys, *given)
    assert result.code == 0, result.out + result.err
    owner = f"{wizard.user_name(65534)}:{wizard.group_name(65534)}"
    assert (f"Note: .env belonged to {owner}, and the new one could not keep that (Operation not permitted): "
            f"if ClubBot reads it as that user, give it back (chown {owner} .env).") in result.out


def test_a_kept_webhook_url_is_kept_as_clubbot_takes_it(here, telegram, capsys):
    given = unattended("--admin-id", str(ADMIN), "--chat-id", str(CLUB_CHAT))
    path = here / ".env"
    path.write_text("WEBHOOK_URL=https://example.org/club\n")  # a path before ClubBot's own: config takes it
    result = setup(capsys, *given)
    assert result.code == 0, result.out + result.err
    assert settings(path)["WEBHOOK_URL"] == "https://example.org/club"


def test_ctrl_c_right_after_the_file_is_renamed_into_place_says_it_was_written(here, capsys, monkeypatch):
    rename = os.replace

    def renamed_then_interrupted(source, target):
        rename(source, target)
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "replace", renamed_then_interrupted)
    result = setup(capsys, *unattended("--admin-id", str(ADMIN), "--chat-id", str(CLUB_CHAT)))
    assert result.code == 130
    assert result.err == "\nsetup stopped; .env was written, run `python clubbot.py check`\n"
    assert settings(here / ".env")["ADMIN_IDS"] == str(ADMIN)

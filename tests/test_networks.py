"""Testnet and mainnet never share a database: test payments never count as revenue."""
import pytest

from runtime import WrongNetwork, build_app


def test_a_database_keeps_the_network_it_was_first_started_on(make_config, tmp_path):
    path = str(tmp_path / "club.db")
    first = build_app(make_config(DATABASE_PATH=path, CRYPTO_PAY_NETWORK="testnet"))
    first.db.close()
    again = build_app(make_config(DATABASE_PATH=path, CRYPTO_PAY_NETWORK="testnet"))
    assert again.db.claim_network("mainnet") == "testnet"
    again.db.close()
    with pytest.raises(WrongNetwork, match="holds testnet payments and CRYPTO_PAY_NETWORK is mainnet"):
        build_app(make_config(DATABASE_PATH=path, CRYPTO_PAY_NETWORK="mainnet"))


def test_a_database_from_before_takes_the_network_it_is_opened_with(make_config, tmp_path):
    from db import Database

    path = tmp_path / "old.db"
    Database(path).migrate()  # as a version without the record left it
    build_app(make_config(DATABASE_PATH=str(path), CRYPTO_PAY_NETWORK="mainnet")).db.close()
    with pytest.raises(WrongNetwork, match="data/clubbot-testnet.db"):
        build_app(make_config(DATABASE_PATH=str(path), CRYPTO_PAY_NETWORK="testnet"))


def test_the_database_path_does_not_move_with_the_network(env):
    """An owner already on testnet keeps the database they have: nothing is left behind by an
    upgrade. A new testnet setup gets its own (setup writes DATABASE_PATH: test_wizard.py)."""
    import config

    base = {k: v for k, v in env.items() if k != "DATABASE_PATH"}
    for network in ("mainnet", "testnet"):
        assert str(config.load({**base, "CRYPTO_PAY_NETWORK": network}, env_file=None).database_path) \
            .endswith("data/clubbot.db")


def test_an_owner_tool_on_the_other_networks_database_refuses_in_one_line(tmp_path, env):
    from test_admin import run_cli

    import config

    build_app(config.load(env, env_file=None)).db.close()  # the database is made on mainnet...
    code, out, err = run_cli(env | {"CRYPTO_PAY_NETWORK": "testnet"}, tmp_path, "stats")  # ...and opened on testnet
    assert code == 1
    assert err.strip().count("\n") == 0 and "holds mainnet payments and CRYPTO_PAY_NETWORK is testnet" in err


def test_check_on_the_other_networks_database_fails_naming_it(tmp_path, env):
    from test_admin import run_cli

    import config

    build_app(config.load(env, env_file=None)).db.close()  # made on mainnet
    code, out, _ = run_cli(env | {"CRYPTO_PAY_NETWORK": "testnet"}, tmp_path, "check")
    assert code == 1
    assert "holds mainnet payments and CRYPTO_PAY_NETWORK is testnet" in out and "FAIL" in out


def test_two_processes_starting_at_once_on_different_networks_agree_on_one(tmp_path):
    """The split setup's two processes, say, one misconfigured: whichever claims first wins,
    and both read the same answer (the other then refuses to start)."""
    import threading

    from db import Database

    path = tmp_path / "club.db"
    Database(path).migrate()
    barrier, answers = threading.Barrier(2), {}

    def claim(network):
        database = Database(path)  # a connection of its own, as another process has
        barrier.wait()
        answers[network] = database.claim_network(network)
        database.close()

    threads = [threading.Thread(target=claim, args=(n,)) for n in ("mainnet", "testnet")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(set(answers.values())) == 1 and set(answers) == {"mainnet", "testnet"}

"""How RedisLimits reaches Redis: the URL (its options, its password), TLS and unix sockets,
one default namespace, the lifetime of what open limits run, and a batch whose limits are
unreachable."""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from nanobanana_async import InvalidRequestError, LimitsUnavailableError, RedisLimits
from nanobanana_async.emulator import Emulator
from tests.support.redis_server import RedisServer, _free_port

from .helpers import client, ledger

pytestmark = pytest.mark.anyio

PASSWORD = "p@ss:w/rd?#%&= ü"  # every character a URL reserves, and one it must encode


@pytest.mark.parametrize("option", ["max_credit", "max-credits", "MAX_CREDITS", "maxCredits"])
def test_an_unknown_option_is_refused_naming_the_known_ones(option: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        RedisLimits.from_url(f"redis://127.0.0.1:6379/0?{option}=4")
    message = str(caught.value)
    assert f"unknown option {option!r} in the limits URL" in message
    for known in ("max_credits", "max_per_second", "namespace", "allow_volatile", "db"):
        assert known in message
    assert "did you mean 'max_credits'" in message


def test_the_url_options_are_read_once_and_checked() -> None:
    limits = RedisLimits.from_url(
        "redis://127.0.0.1:6379/2?namespace=acct&max_credits=4&max_per_second=2.5&lease=9"
        "&timeout=0.5&allow_volatile=1&client_name=worker-1"
    )
    assert (limits.namespace, limits.max_credits, limits.max_per_second) == ("acct", 4, 2.5)
    with pytest.raises(InvalidRequestError, match="given twice"):
        RedisLimits.from_url("redis://127.0.0.1/0?max_credits=4&max_credits=5")
    with pytest.raises(InvalidRequestError, match=r"allow_volatile='maybe'.*not valid"):
        RedisLimits.from_url("redis://127.0.0.1/0?allow_volatile=maybe")
    # The constructor takes its options as arguments: one in the URL would be lost there.
    with pytest.raises(InvalidRequestError, match="from_url"):
        RedisLimits("redis://127.0.0.1/0?max_credits=4")
    with pytest.raises(InvalidRequestError, match="database number"):
        RedisLimits("redis://127.0.0.1/zero")


def test_one_default_namespace_everywhere() -> None:
    assert RedisLimits("redis://127.0.0.1/0").namespace == "nanobanana"
    assert RedisLimits.from_url("redis://127.0.0.1/0").namespace == "nanobanana"


async def test_a_password_with_reserved_characters_is_decoded_before_auth(
    redis_factory: Callable[..., RedisServer],
) -> None:
    server = redis_factory(password=PASSWORD)
    assert urllib.parse.quote(PASSWORD, safe="") in server.url  # as URLs require it written
    emulator = Emulator()
    limits = await ledger(server.url, "acct", 10)
    async with client(emulator, limits) as nb:
        await nb.generate("authenticated")
    assert (await limits.status()).spent == 2
    # The password in the query, as redis-py and coredis also read it.
    query = f"redis://127.0.0.1:{server.port}/0?password={urllib.parse.quote(PASSWORD)}"
    async with RedisLimits.from_url(query + "&namespace=acct") as again:
        assert (await again.status()).spent == 2
    wrong = server.url.replace(urllib.parse.quote(PASSWORD, safe=""), "not-it")
    with pytest.raises(LimitsUnavailableError) as caught:
        async with RedisLimits(wrong):
            pass
    assert "WRONGPASS" in str(caught.value)
    assert "not-it" not in str(caught.value)


async def test_a_unix_socket(redis_factory: Callable[..., RedisServer], tmp_path: Path) -> None:
    socket_path = tmp_path / "redis.sock"
    redis_factory(options=["--unixsocket", str(socket_path)])
    limits = await ledger(f"unix://{socket_path}?db=3", "acct", 10)
    async with limits:
        await limits.settle(await limits.acquire(4), spent=4)
    assert (await limits.status()).spent == 4


async def test_tls(redis_factory: Callable[..., RedisServer], tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    await anyio.run_process(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ]
    )
    port = _free_port()
    tls = ["--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file", str(key)]
    redis_factory(options=[*tls, "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"])
    trusted = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}"
    limits = await ledger(trusted, "acct", 10)
    async with limits:
        await limits.settle(await limits.acquire(4), spent=4)
    assert (await limits.status()).spent == 4
    # Not trusted: the certificate is checked.
    with pytest.raises(LimitsUnavailableError, match="CERTIFICATE_VERIFY_FAILED"):
        async with RedisLimits(f"rediss://127.0.0.1:{port}/0"):
            pass


async def test_open_limits_run_their_tasks_in_a_task_group_of_the_opener(
    redis_server: RedisServer, redis_url: str
) -> None:
    # No system task, no bare asyncio task: what open limits run belongs to the task that
    # opened them (the client's async with), and ends with its aclose.
    me = anyio.get_current_task().id
    before = {task.id for task in anyio.get_running_tasks()}
    async with RedisLimits(redis_url, namespace=redis_server.namespace()) as limits:
        await limits.acquire(0)
        started = [task for task in anyio.get_running_tasks() if task.id not in before]
        assert started
        assert all(task.parent_id == me for task in started), started
    assert {task.id for task in anyio.get_running_tasks()} <= before


async def test_limits_closed_by_another_task_are_left_by_their_opener(
    redis_server: RedisServer, redis_url: str
) -> None:
    # A client closed from another task (an aclose started in a task group) stops its
    # limits there; the opener's async with leaves their task group; posted settlements
    # were sent first.
    emulator = Emulator()
    limits = await ledger(redis_url, redis_server.namespace(), 10)
    async with client(emulator, limits) as nb:
        await nb.generate("before the close")
        async with anyio.create_task_group() as tg:
            tg.start_soon(nb.aclose)
    status = await limits.status()
    assert (status.spent, status.reserved) == (2, 0)
    async with client(emulator, limits) as again:  # and they open again
        await again.generate("after")
    assert (await limits.status()).spent == 4


async def test_a_batch_fails_once_when_its_limits_cannot_be_reached() -> None:
    # Not one failure per job: the batch asks once, before its first job.
    emulator = Emulator()
    nb = client(emulator, RedisLimits("redis://127.0.0.1:1/0", timeout=0.5))
    with pytest.raises(LimitsUnavailableError, match="nothing was sent"):
        await nb.run_batch([f"p{i}" for i in range(40)])
    async with nb.batch([f"p{i}" for i in range(40)]) as batch:
        with pytest.raises(LimitsUnavailableError, match="nothing was sent"):
            await batch.__anext__()  # not one result: the error
    assert emulator.stats.generate_requests == 0


@pytest.mark.parametrize(
    "reply", [b"$abc\r\nxyz\r\n", b":twelve\r\n", b"*x\r\n", b"*1\r\n:1.5\r\n", b"!oops\r\n"]
)
def test_bytes_that_are_not_resp_are_a_protocol_error(reply: bytes) -> None:
    from nanobanana_async.limits.redis.resp import ProtocolError, parse

    with pytest.raises(ProtocolError, match="not a RESP reply"):
        parse(reply)

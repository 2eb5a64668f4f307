"""Subscribe and SubscribeBatches on real gateways: the same changes in both framings, resume
tokens that continue either stream with no gap and no duplicate, tokens that cannot be moved."""

from __future__ import annotations

import itertools
import json
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from allmende.broker import free_port
from allmende.ca import CertificateAuthority
from allmende.client import GatewayClient
from allmende.config import load_town_config
from allmende.errors import AllmendeError, InvalidRequest
from allmende.identity import gateway_server_name
from allmende.store import connect
from allmende.v1 import query_pb2
from allmende_cli.bench.memory_bench import rss_mb
from allmende_cli.bench.town import CONSUMER, BenchTown, make_bench_town
from allmende_cli.bench.town import DATASET as PERMITS
from allmende_cli.bench.town import PURPOSE as BENCH_PURPOSE
from allmende_gateway import GatewayThread
from allmende_node.importer import import_configured

from .towns import Town, make_town, reimport

pytestmark = pytest.mark.integration

OWNER, SITES, PURPOSE = "kaiserslautern", "parking-sites", "traffic-planning"
ROUND = itertools.count(1)  # each edit sets new values, so each one is a change


@dataclass
class Towns:
    ca: CertificateAuthority
    kl: Town
    ps: Town

    def forwarded(self) -> GatewayClient:
        """A Pirmasens service through its own gateway, which forwards to the owner."""
        return self.ps.client(self.ca, "traffic-dashboard")

    def direct(self) -> GatewayClient:
        """The same service straight at the owner's gateway."""
        return GatewayClient(
            self.kl.config.gateway.listen,
            self.ps.service_tls(self.ca, "traffic-dashboard"),
            server_name=gateway_server_name(self.kl.cluster, OWNER),
        )


@pytest.fixture(scope="module")
def towns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Towns]:
    root = tmp_path_factory.mktemp("streams")
    ca = CertificateAuthority.init(root / "ca", "suedwest")
    kl = make_town(root, ca, ca.cert_path, OWNER, datasets=True, agreements=True)
    ps = make_town(
        root, ca, ca.cert_path, "pirmasens", peers={OWNER: (kl.config.gateway.listen, "suedwest")}
    )
    with GatewayThread(kl.config.gateway), GatewayThread(ps.config.gateway):
        yield Towns(ca, kl, ps)


class Reader:
    """A stream read on a thread; the test takes messages with a timeout."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self._out: queue.Queue = queue.Queue()
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        try:
            for message in self.stream:
                self._out.put(message)
        except AllmendeError as err:
            self._out.put(err)

    def take(self, timeout: float = 10.0) -> Any:
        item = self._out.get(timeout=timeout)
        if isinstance(item, Exception):
            raise item
        return item

    def events(self, n: int) -> list[query_pb2.ChangeEvent]:
        """The next ``n`` changes of a Subscribe stream (the greeting skipped)."""
        got: list[query_pb2.ChangeEvent] = []
        while len(got) < n:
            event = self.take()
            if event.kind:
                got.append(event)
        return got

    def batches_until(self, n: int) -> list[query_pb2.ChangeBatch]:
        """Batches of a SubscribeBatches stream until they hold ``n`` changes."""
        got: list[query_pb2.ChangeBatch] = []
        while sum(len(b.events) for b in got) < n:
            got.append(self.take())
        return got

    def quiet(self, seconds: float = 0.5) -> None:
        """Asserts that nothing more arrives within ``seconds``."""
        with pytest.raises(queue.Empty):
            item = self._out.get(timeout=seconds)
            raise AssertionError(f"unexpected message {item}")

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stream.cancel()


def change(e: query_pb2.ChangeEvent) -> tuple[int, str, str, int]:
    """What a change says, without its resume token."""
    return (e.kind, e.record.id, e.record.json, e.changed_at.ToNanoseconds())


def log_from_start(
    client: GatewayClient, dataset: str = SITES, **kw: Any
) -> list[query_pb2.ChangeEvent]:
    """Every change the caller may see, by Subscribe from the beginning."""
    n = sum(len(b.events) for b in all_batches(client, dataset, **kw))
    start = query_pb2.START_FROM_BEGINNING
    with Reader(client.subscribe(OWNER, dataset, PURPOSE, start=start, **kw)) as r:
        events = r.events(n)
        r.quiet(0.3)
    return events


def all_batches(
    client: GatewayClient, dataset: str = SITES, **kw: Any
) -> list[query_pb2.ChangeBatch]:
    """Every batch of a SubscribeBatches stream from the beginning, until it goes quiet."""
    stream = client.subscribe_batches(
        OWNER, dataset, PURPOSE, start=query_pb2.START_FROM_BEGINNING, **kw
    )
    got = []
    with Reader(stream) as r:
        while True:
            try:
                got.append(r.take(0.5))
            except queue.Empty:
                return got


@pytest.mark.parametrize("via", ["direct", "forwarded"])
def test_batches_carry_the_same_changes_as_events(towns: Towns, via: str) -> None:
    with getattr(towns, via)() as c:
        events = log_from_start(c)
        batches = all_batches(c, max_batch=5)
    assert len(events) >= 12
    # The first batch carries the decision; every batch at most max_batch changes, in order.
    assert batches[0].HasField("decision") and batches[0].decision.policy_version
    assert not any(b.HasField("decision") for b in batches[1:])
    assert all(0 < len(b.events) <= 5 for b in batches)
    assert all(b.resume_token for b in batches)
    flat = [e for b in batches for e in b.events]
    assert [change(e) for e in flat] == [change(e) for e in events]
    assert not any(e.resume_token for e in flat)


def test_batches_apply_masks_and_filters_as_events_do(towns: Towns) -> None:
    """Pirmasens' grant on the permits masks holder and plate; its own filter narrows it to
    Innenstadt. A permit that leaves Innenstadt arrives as a delete, in both framings."""
    path = towns.kl.dir / "data" / "permits.csv"
    original = path.read_text()
    where = ["district=Innenstadt"]
    try:
        with towns.forwarded() as c:
            path.write_text(
                original.replace(
                    "KL-003,Holder 3,KL-AB 3,Innenstadt", "KL-003,Holder 3,KL-AB 3,Betzenberg"
                )
            )
            reimport(towns.kl)
            events = log_from_start(c, "parking-permits", where=where)
            batches = all_batches(c, "parking-permits", where=where, max_batch=4)
    finally:
        path.write_text(original)
        reimport(towns.kl)
    flat = [e for b in batches for e in b.events]
    assert [change(e) for e in flat] == [change(e) for e in events]
    upserts = [json.loads(e.record.json) for e in flat if e.kind == query_pb2.CHANGE_KIND_UPSERT]
    assert len(upserts) >= 10
    assert all(r["district"] == "Innenstadt" for r in upserts)
    assert all(r["holder"] is None and r["plate"] is None for r in upserts)
    assert (flat[-1].kind, flat[-1].record.id) == (query_pb2.CHANGE_KIND_DELETE, "KL-003")
    assert batches[0].decision.masked_fields["plate"] == "redact"


def test_batches_default_to_500_and_refuse_more_than_5000(towns: Towns) -> None:
    with towns.forwarded() as c:
        batches = all_batches(c)
        assert len(batches) == 1  # the decision and every change of the small log at once
        with pytest.raises(InvalidRequest) as info:
            all_batches(c, max_batch=5001)
    assert info.value.field == "max_batch"
    assert "max_batch 5001" in str(info.value)


def _edit(town: Town, **capacities: int) -> None:
    """Change the capacity of the named parking sites (p_03=…) and import, as a connector would."""
    path = town.dir / "data" / "parking.geojson"
    doc = json.loads(path.read_text())
    for f in doc["features"]:
        key = f["properties"]["id"].replace("-", "_")
        if key in capacities:
            f["properties"]["capacity"] = capacities[key]
    path.write_text(json.dumps(doc))
    reimport(town)


@pytest.mark.parametrize("via", ["direct", "forwarded"])
def test_resume_continues_either_stream_with_no_gap_and_no_duplicate(
    towns: Towns, via: str
) -> None:
    with getattr(towns, via)() as c:
        before = log_from_start(c)
        # Subscribe, stop after the fifth change.
        with Reader(c.subscribe(OWNER, SITES, PURPOSE, start=query_pb2.START_FROM_BEGINNING)) as r:
            seen = r.events(5)
        # Disconnected: changes happen.
        k = next(ROUND)
        _edit(towns.kl, p_07=700 + k, p_11=1100 + k)
        # SubscribeBatches resumes from the Subscribe token (start and max_batch do not matter).
        with Reader(
            c.subscribe_batches(
                OWNER,
                SITES,
                PURPOSE,
                start=query_pb2.START_FROM_LIVE,
                resume_token=seen[-1].resume_token,
                max_batch=3,
            )
        ) as r:
            batches = [r.take(), r.take()]
        assert batches[0].HasField("decision") and not batches[1].HasField("decision")
        assert [len(b.events) for b in batches] == [3, 3]
        resumed = [e for b in batches for e in b.events]
        # More changes while disconnected; Subscribe resumes from the last batch's token.
        _edit(towns.kl, p_02=200 + k)
        rest_n = len(before) + 3 - len(seen) - len(resumed)
        with Reader(c.subscribe(OWNER, SITES, PURPOSE, resume_token=batches[-1].resume_token)) as r:
            hello = r.take()
            assert hello.kind == query_pb2.CHANGE_KIND_UNSPECIFIED and hello.decision.policy_version
            rest = r.events(rest_n)
            r.quiet()
        after = log_from_start(c)
    assert [change(e) for e in seen + resumed + rest] == [change(e) for e in after]
    assert [e.record.id for e in after[len(before) :]] == ["p-07", "p-11", "p-02"]


def test_resume_after_a_live_batch(towns: Towns) -> None:
    with towns.forwarded() as c:
        with Reader(
            c.subscribe_batches(OWNER, SITES, PURPOSE, start=query_pb2.START_FROM_LIVE)
        ) as r:
            opened = r.take()
            assert opened.HasField("decision") and not opened.events
            k = next(ROUND)
            _edit(towns.kl, p_05=500 + k)
            (batch,) = r.batches_until(1)
            assert [(e.kind, e.record.id) for e in batch.events] == [
                (query_pb2.CHANGE_KIND_UPSERT, "p-05")
            ]
            assert json.loads(batch.events[0].record.json)["capacity"] == 500 + k
        _edit(towns.kl, p_05=550 + k, p_06=600 + k)
        with Reader(c.subscribe(OWNER, SITES, PURPOSE, resume_token=batch.resume_token)) as r:
            got = r.events(2)
            r.quiet()
        # The live stream's opening token resumes from where it opened.
        with Reader(c.subscribe(OWNER, SITES, PURPOSE, resume_token=opened.resume_token)) as r:
            again = r.events(3)
            r.quiet()
    assert [e.record.id for e in got] == ["p-05", "p-06"]
    assert [e.record.id for e in again] == ["p-05", "p-05", "p-06"]


def _refused(c: GatewayClient, token: str, **kw: Any) -> InvalidRequest:
    with (
        pytest.raises(InvalidRequest) as info,
        Reader(
            c.subscribe(OWNER, SITES, kw.pop("purpose", PURPOSE), resume_token=token, **kw)
        ) as r,
    ):
        r.take()
    assert info.value.field == "resume_token"
    return info.value


def test_resume_tokens_cannot_be_moved_altered_or_reused(towns: Towns) -> None:
    with towns.forwarded() as c:
        with Reader(c.subscribe(OWNER, SITES, PURPOSE, start=query_pb2.START_FROM_BEGINNING)) as r:
            token = r.events(3)[-1].resume_token
        signed, _, seq = token.rpartition(".")
        # Past every change the stream had reached: refused, however validly signed.
        _refused(c, f"{signed}.{int(seq) + 10_000}")
        _refused(c, f"{signed}.x")
        flipped = signed[:10] + ("B" if signed[10] == "A" else "A") + signed[11:]
        _refused(c, f"{flipped}.{seq}")
        _refused(c, "not-a-token")
        # Another request (a filter) or another purpose: the token is bound to the first.
        _refused(c, token, where=["capacity>=100"])
        _refused(c, token, purpose="research")


def test_cli_subscribe_in_batches(towns: Towns, tmp_path: Path) -> None:
    tls = towns.ps.service_tls(towns.ca, "traffic-dashboard")
    profile = tmp_path / "profile.toml"
    profile.write_text(
        "[client]\n"
        f'gateway = "{towns.ps.config.gateway.listen}"\n'
        f'ca = "{tls.ca}"\ncert = "{tls.cert}"\nkey = "{tls.key}"\n'
        f'server_name = "{gateway_server_name(towns.ps.cluster, towns.ps.member)}"\n'
    )
    with towns.forwarded() as c:
        want = [(e.record.id, e.kind) for e in log_from_start(c)]
    cmd = [sys.executable, "-m", "allmende_cli.main", "subscribe", "--profile", str(profile)]
    cmd += [f"{OWNER}/{SITES}", "--purpose", PURPOSE, "--batch"]
    refused = subprocess.run([*cmd, "0"], capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2 and "--batch must be between 1 and 5000" in refused.stderr
    proc = subprocess.Popen([*cmd, "5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines = [json.loads(proc.stdout.readline()) for _ in want]
    finally:
        proc.terminate()
        proc.wait(10)
    kinds = {"upsert": query_pb2.CHANGE_KIND_UPSERT, "delete": query_pb2.CHANGE_KIND_DELETE}
    assert [(line["id"], kinds[line["kind"]]) for line in lines] == want
    # Only the last change of each batch of 5 carries the batch's resume token.
    tokens = [i for i, line in enumerate(lines) if "resume_token" in line]
    assert tokens == [i for i in range(len(lines)) if i % 5 == 4 or i == len(lines) - 1]


# -- flow control: a stalled subscriber costs the gateways a bounded buffer --------------------

BIG = 100_000
GROWTH_MB = 30
WARM = 60_000  # changes read before measuring: more than the owner's row cache holds


@dataclass
class Process:
    name: str
    proc: subprocess.Popen[bytes]
    address: str
    server_name: str


@dataclass
class BigTowns:
    bench: BenchTown
    owner: Process
    forwarding: Process

    def client(self, via: Process) -> GatewayClient:
        return GatewayClient(via.address, self.bench.consumer_tls, server_name=via.server_name)


def _forwarding_town(root: Path, bench: BenchTown) -> Path:
    """Pirmasens' town.toml: its gateway forwards its services' requests to the owner."""
    ca = CertificateAuthority.load(root / "ca")
    issued = ca.issue(root / "pirmasens-gateway" / "certs", CONSUMER)
    tdir = root / "pirmasens-gateway"
    toml = [
        "[town]",
        f'member = "{CONSUMER}"',
        f'cluster = "{ca.cluster}"',
        'data_dir = "var"',
        "[backbone]",
        'bootstrap_servers = ["127.0.0.1:1"]',
        "[tls]",
        f'ca = "{ca.cert_path}"',
        f'cert = "{issued.tls.cert}"',
        f'key = "{issued.tls.key}"',
        "[keys]",
        f'signing_key = "{issued.signing_key}"',
        f'encryption_key = "{issued.encryption_key}"',
        f'cluster_ca = "{ca.cert_path}"',
        "[gateway]",
        f'listen = "127.0.0.1:{free_port()}"',
        "[gateway.peers]",
        f'{OWNER} = {{ address = "{bench.config.gateway.listen}", cluster = "{ca.cluster}" }}',
    ]
    (tdir / "town.toml").write_text("\n".join(toml) + "\n", encoding="utf-8")
    list(import_configured(load_town_config(tdir / "town.toml", env={}).node))  # its store
    return tdir / "town.toml"


def _start_gateway(name: str, config: Path, cluster: str, member: str) -> Process:
    cmd = [sys.executable, "-m", "allmende_cli.main", "gateway", "run", "--config", str(config)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = load_town_config(config, env={}).gateway.listen
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"the {name} gateway ended with {proc.returncode}")
        try:
            with socket.create_connection((host, int(port)), timeout=0.2):
                break
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"the {name} gateway did not listen on {address}") from None
            time.sleep(0.05)
    return Process(name, proc, address, gateway_server_name(cluster, member))


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BigTowns]:
    root = tmp_path_factory.mktemp("big")
    bench = make_bench_town(root, BIG)  # the real importer: BIG upserts in the change log
    forwarding_config = _forwarding_town(root, bench)
    cluster = bench.config.gateway.cluster
    procs: list[Process] = []
    try:
        procs.append(_start_gateway("owner", bench.config.path, cluster, OWNER))
        procs.append(_start_gateway("forwarding", forwarding_config, cluster, CONSUMER))
        yield BigTowns(bench, *procs)
    finally:
        for p in procs:
            p.proc.terminate()
            try:
                p.proc.wait(10)
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait(5)


class _Writer(threading.Thread):
    """Appends changes to the owner's log as its node's importer would, until stopped."""

    def __init__(self, store: Path) -> None:
        super().__init__(daemon=True)
        self.store = store
        self.stop = threading.Event()
        self.written = 0

    def run(self) -> None:
        conn = connect(self.store)
        try:
            while not self.stop.wait(0.05):
                rows = [
                    (
                        PERMITS,
                        f"KL-{i:06d}",
                        json.dumps({"permit_id": f"KL-{i:06d}", "zone": f"W{self.written}"}),
                        "2026-12-01T00:00:00.000Z",
                    )
                    for i in range(1, 501)
                ]
                with conn:
                    conn.executemany(
                        "INSERT INTO changes (dataset, record_id, kind, json, changed_at) "
                        "VALUES (?, ?, 'upsert', ?, ?)",
                        rows,
                    )
                self.written += len(rows)
        finally:
            conn.close()


def test_a_stalled_subscriber_does_not_grow_the_gateways_memory(big: BigTowns) -> None:
    """Stalled streams from the beginning of 100k changes, and a live one while changes keep
    arriving, straight at the owner and through a forwarding gateway: neither gateway's
    memory grows by more than a bound, and both keep answering other callers' queries."""
    gateways = (big.owner, big.forwarding)
    clients = [big.client(g) for g in gateways for _ in range(3)]
    asker = big.client(big.forwarding)
    streams: list[Any] = []
    writer = _Writer(big.bench.config.node.store_path)
    try:
        # Warm both gateways: the first calls load code, and the owner's row cache (records as
        # a grant shapes them, bounded by bytes) fills up to its size with any traffic. What
        # is measured after this is what the stalled streams hold.
        for g in gateways:
            with big.client(g) as c:
                c.query(OWNER, PERMITS, BENCH_PURPOSE, page_size=10)
                warm = c.subscribe_batches(OWNER, PERMITS, BENCH_PURPOSE, max_batch=5000)
                read = 0
                for batch in warm:
                    read += len(batch.events)
                    if read >= WARM or g is big.forwarding:
                        break
                warm.cancel()
        before = {g.name: rss_mb(g.proc.pid) for g in gateways}
        start = query_pb2.START_FROM_BEGINNING
        for i, c in enumerate(clients):
            if i % 3 == 0:
                s = c.subscribe(OWNER, PERMITS, BENCH_PURPOSE, start=start)
            elif i % 3 == 1:
                s = c.subscribe_batches(OWNER, PERMITS, BENCH_PURPOSE, start=start)
            else:
                s = c.subscribe(OWNER, PERMITS, BENCH_PURPOSE, start=query_pb2.START_FROM_LIVE)
            it = iter(s)
            streams.append((s, it, next(it)))  # open: then the caller reads nothing more
        writer.start()
        peak = dict(before)
        latencies = []
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            page = asker.query(OWNER, PERMITS, BENCH_PURPOSE, page_size=100)
            latencies.append(time.perf_counter() - t0)
            assert len(page.records) == 100
            for g in gateways:
                peak[g.name] = max(peak[g.name], rss_mb(g.proc.pid))
            time.sleep(0.1)
        writer.stop.set()
        writer.join(5)
        assert writer.written >= 5_000  # changes kept arriving
        growth = {name: round(peak[name] - before[name], 1) for name in before}
        print(f"RSS before {before} MB, growth {growth} MB")
        assert all(mb < GROWTH_MB for mb in growth.values()), (growth, before)
        # Generous: the machine is shared with the test, the writer and both gateways.
        assert len(latencies) >= 10 and max(latencies) < 5.0, latencies
        # Stalled, not dropped: the batched stream from the beginning goes on where it stood.
        _, batches, first = streams[1]
        ids = [e.record.id for e in first.events]
        ids += [e.record.id for _ in range(20) for e in next(batches).events]
        assert ids == [f"KL-{i:06d}" for i in range(1, len(ids) + 1)]
    finally:
        writer.stop.set()
        for s, _, _ in streams:
            s.cancel()
        for c in [*clients, asker]:
            c.close()

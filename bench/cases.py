"""The six benchmarks of issue 6. Each measures altinn-mottak and its baseline in the same run,
alternating which goes first (A B, B A, ...), and adds rows and checks to the report."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from bench.env import APP, MB, MIB, ORG, ROOT, RequestCounter, World, median, percentile, storage_session
from bench.report import Report, fmt, ratio
from devtools.simulator import ElementSpec

# -- helpers ----------------------------------------------------------------------------------


def form(rnd: random.Random) -> ElementSpec:
    return ElementSpec(data_type="model", content_type="application/xml", size=5 * 1000, seed=rnd.getrandbits(48))


def attachment(rnd: random.Random, size: int, i: int) -> ElementSpec:
    return ElementSpec(
        data_type="vedlegg", content_type="application/pdf", size=size, filename=f"vedlegg {i}.pdf", file_scan_result="Clean", seed=rnd.getrandbits(48)
    )


def chunks(items: Sequence[Any], n: int) -> list[Sequence[Any]]:
    size = -(-len(items) // n)
    return [items[i : i + size] for i in range(0, len(items), size)]


def alternate(rounds: list[Sequence[Any]], ours: Callable[[Sequence[Any]], float], base: Callable[[Sequence[Any]], float]) -> tuple[float, float]:
    """Run both on every round, ours first on even rounds and the baseline first on odd ones."""
    t_ours = t_base = 0.0
    for i, chunk in enumerate(rounds):
        if i % 2 == 0:
            t_ours += ours(chunk)
            t_base += base(chunk)
        else:
            t_base += base(chunk)
            t_ours += ours(chunk)
    return t_ours, t_base


def user_functions(app: Any) -> dict[str, Callable[..., Any]]:
    """name -> user function of a FunctionApp (leaving the app indexable again, like LocalHost does)."""
    saved = getattr(app, "functions_bindings", None)
    app.functions_bindings = None
    try:
        return {f.get_function_name(): f.get_user_function() for f in app.get_functions()}
    finally:
        app.functions_bindings = saved


def enqueue(world: World, instances: Sequence[dict[str, Any]]) -> None:
    from shared.events import InstanceRef, queue_message

    queue = world.runtime.events_queue

    def send(inst: dict[str, Any]) -> None:
        ref = InstanceRef(ORG, APP, inst["party"], inst["guid"])
        queue.send_message(json.dumps(queue_message(None, ref, via="bench")))

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(send, instances))


@dataclass
class Tally:
    """What the archive runs of one benchmark did, checked once at its end (counts only)."""

    instances: int = 0
    confirmed: int = 0
    confirmed_twice: int = 0
    failures: int = 0
    poisoned: int = 0
    not_idle: int = 0
    exceptions: list[tuple[str, str]] = field(default_factory=list)

    def check(self, report: Report, what: str) -> None:
        report.check(f"{what}: every instance archived and confirmed exactly once", self.confirmed == self.instances and not self.confirmed_twice
                     and not self.not_idle, f"{self.confirmed}/{self.instances} confirmed, {self.confirmed_twice} twice")  # fmt: skip
        report.check(f"{what}: no failed invocation, nothing poisoned", self.failures == 0 and self.poisoned == 0,
                     f"failures {self.failures}, poisoned {self.poisoned} {self.exceptions[:2]}")  # fmt: skip


def run_archive(world: World, instances: Sequence[dict[str, Any]], tally: Tally, queue_counter: RequestCounter | None = None) -> float:
    """Queue the instances (the backlog of a filing deadline), start the local Functions host with
    the host's concurrency and time it until the last instance is confirmed to Altinn."""
    import function_app
    from devtools.localhost import LocalHost

    enqueue(world, instances)
    host = LocalHost(function_app.app, connection_string=world.azurite.connection_string, host_json=ROOT / "host.json", concurrency=world.concurrency)
    started = time.time()
    host.start()
    try:
        if queue_counter is not None and host._session is not None:
            queue_counter.attach(host._session)
        deadline = time.monotonic() + 900
        while host.stats["archive"]["invocations"] < len(instances) and time.monotonic() < deadline:
            time.sleep(0.05)  # in-process counters: polling the queue would cost Azurite requests
        idle = host.wait_idle(timeout=max(1.0, deadline - time.monotonic()))
        stats = host.stats["archive"]
    finally:
        host.stop()
    ids = {i["id"] for i in instances}
    confirmed = [(iid, t) for iid, t in world.sim.counters()["confirmations"] if iid in ids]
    tally.instances += len(ids)
    tally.confirmed += len({iid for iid, _ in confirmed})
    tally.confirmed_twice += len(confirmed) - len({iid for iid, _ in confirmed})
    tally.failures += stats["failures"]
    tally.poisoned += stats["poisoned"]
    tally.not_idle += not idle
    tally.exceptions += stats["exceptions"]
    return (max(t for _, t in confirmed) if confirmed else time.time()) - started


def run_baseline(world: World, instances: Sequence[dict[str, Any]], counter: RequestCounter | None = None) -> float:
    """The same bytes with the same concurrency, by the shortest path: requests stream -> upload_blob."""
    token = world.runtime.altinn.token()  # the app's cached token: the baseline costs Maskinporten nothing
    headers = {"Authorization": f"Bearer {token}"}
    session, container = world.baseline_session, world.baseline_container
    parallel = world.settings.parallel_downloads
    upload_concurrency = world.runtime.archive.upload_concurrency

    def copy(inst: dict[str, Any], element: tuple[str, int]) -> None:
        element_id, size = element
        with session.get(world.data_url(inst["id"], element_id), headers=headers, stream=True, timeout=(5, 60)) as resp:
            resp.raise_for_status()
            container.get_blob_client(f"{inst['id']}/{element_id}").upload_blob(resp.raw, length=size, overwrite=True, max_concurrency=upload_concurrency)
        if counter is not None:
            counter.add("GET")
            counter.add("PUT")

    def one(inst: dict[str, Any]) -> None:
        elements = inst["elements"]
        workers = min(parallel, len(elements))
        if workers <= 1:
            for e in elements:
                copy(inst, e)
        else:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(lambda e: copy(inst, e), elements))

    started = time.perf_counter()
    with ThreadPoolExecutor(world.concurrency) as pool:
        list(pool.map(one, instances))
    return time.perf_counter() - started


def spot_check(world: World, report: Report, instances: Sequence[dict[str, Any]], what: str, rnd: random.Random, n: int = 3) -> None:
    """A few archived instances, element by element: manifest sha256 == what the simulator generated."""
    from azure.storage.blob import ContainerClient

    container = ContainerClient.from_connection_string(world.azurite.connection_string, world.settings.archive_container)
    base = world.baseline_container
    bad: list[str] = []
    for inst in rnd.sample(list(instances), min(n, len(instances))):
        prefix = f"{ORG}/{APP}/{inst['id']}/"
        manifest = json.loads(container.get_blob_client(prefix + "manifest.json").download_blob().readall())
        by_id = {e["dataElementId"]: e for e in manifest["dataElements"]}
        for element_id, size in inst["elements"]:
            entry = by_id.get(element_id)
            if entry is None or entry["size"] != size or entry["sha256"] != world.sim.sha256(element_id):
                bad.append(element_id)
            if base.get_blob_client(f"{inst['id']}/{element_id}").get_blob_properties().size != size:
                bad.append("baseline " + element_id)
    report.check(f"{what}: spot check, manifest sha256 and sizes match the simulator", not bad, ", ".join(bad[:3]))


# -- warm-up ----------------------------------------------------------------------------------


def warm_up(world: World, report: Report) -> None:
    """Imports, clients, pooled connections and the one token, for both sides, before any timing."""
    rnd = random.Random(world.seed - 1)
    instances = world.sim.add(ORG, APP, [[form(rnd), attachment(rnd, 3 * MB, 1), attachment(rnd, 30 * MB, 2)] for _ in range(world.concurrency)])
    tally = Tally()
    run_archive(world, instances, tally)
    run_baseline(world, instances)
    tally.check(report, "[warm-up]")


# -- 1. archive throughput --------------------------------------------------------------------


def throughput(world: World, report: Report) -> None:
    rnd = random.Random(world.seed)
    n = 24 if world.quick else 200
    rounds = 2 if world.quick else 8  # rounds of 12 or 25 instances: at least twice the concurrency, so the tail is small
    specs = [[form(rnd), attachment(rnd, rnd.randint(1 * MB, 20 * MB), 1), attachment(rnd, rnd.randint(1 * MB, 20 * MB), 2)] for _ in range(n)]
    instances = world.sim.add(ORG, APP, specs)
    total = sum(size for inst in instances for _, size in inst["elements"])
    print(f"[1] archive throughput: {n} instances, {total / MB:,.0f} MB, concurrency {world.concurrency}", flush=True)
    tally = Tally()
    t_ours, t_base = alternate(chunks(instances, rounds), lambda c: run_archive(world, c, tally), lambda c: run_baseline(world, c))
    tally.check(report, "[1]")
    ours, base = total / MB / t_ours, total / MB / t_base
    report.row(1, f"archive throughput, {n} instances (5 KB form + 2 attachments of 1-20 MB), concurrency {world.concurrency}",
               "MB/s", fmt(ours), fmt(base), ratio(ours, base), ">= 0.8", ours / base >= 0.8)  # fmt: skip
    spot_check(world, report, instances, "[1]", rnd)


# -- 2. many small instances ------------------------------------------------------------------


def small(world: World, report: Report) -> dict[str, Any]:
    rnd = random.Random(world.seed + 2)
    n = 200 if world.quick else 2000
    instances = world.sim.add(ORG, APP, [[form(rnd)] for _ in range(n)])
    print(f"[2] many small instances: {n} x one 5 KB form, concurrency {world.concurrency}", flush=True)
    blob_counter, queue_counter, base_counter = RequestCounter(), RequestCounter(), RequestCounter()
    blob_counter.attach(storage_session(world.runtime.container))
    before = world.sim.counters()["calls"]
    tally = Tally()
    t_ours, t_base = alternate(
        chunks(instances, 4 if world.quick else 10),
        lambda c: run_archive(world, c, tally, queue_counter),
        lambda c: run_baseline(world, c, base_counter),
    )
    tally.check(report, "[2]")
    after = world.sim.counters()["calls"]
    altinn = sum(after.get(k, 0) - before.get(k, 0) for k in ("instance", "data", "complete", "token", "exchange")) - base_counter.counts["GET"]
    ours, base = n / t_ours, n / t_base
    report.row(2, f"many small instances: {n} x one 5 KB form", "instances/s", fmt(ours), fmt(base), ratio(ours, base))
    report.row(2, "many small instances", "time per instance vs. the baseline's per-copy time (GET + PUT)",
               f"{t_ours / n * 1000:.1f} ms", f"{t_base / n * 1000:.1f} ms", ratio(t_ours, t_base) + "x")  # fmt: skip
    report.row(2, "many small instances", "requests per instance (Altinn + blob + queue)",
               f"{altinn / n:.2f} + {blob_counter.total() / n:.2f} + {queue_counter.total() / n:.2f}",
               f"{base_counter.counts['GET'] / n:.2f} + {base_counter.counts['PUT'] / n:.2f} + 0",
               ratio(altinn + blob_counter.total() + queue_counter.total(), base_counter.total()) + "x")  # fmt: skip
    spot_check(world, report, instances, "[2]", rnd)
    return {"n": n}


# -- 3. token economy -------------------------------------------------------------------------


def tokens(world: World, report: Report, span: float, archived: int) -> None:
    counters = world.sim.counters()
    grants, exchanges = counters["grants"], counters["exchanges"]
    print(f"[3] token economy over {archived} instances in {span:.0f} s", flush=True)
    report.row(3, f"token economy: {archived} instances archived by one process in {span:.0f} s (token lifetimes: Maskinporten 599 s, Altinn 1800 s)",
               "Maskinporten grants / Altinn exchanges", f"{grants} / {exchanges}", "", "", "1 / 1", grants == 1 and exchanges == 1)  # fmt: skip
    report.check("[3] one Maskinporten grant and one Altinn exchange for the whole run", grants == 1 and exchanges == 1, f"{grants} / {exchanges}")
    report.check("[3] no grant rejected by the simulator", not counters["rejected_grants"], "; ".join(counters["rejected_grants"][:2]))


# -- 4. memory ---------------------------------------------------------------------------------


def memory(world: World, report: Report) -> None:
    single_put = world.runtime.archive.single_put_max - 1  # the largest element sent in one Put Blob, held whole
    sizes = [single_put, 64 * MIB, 256 * MIB] if world.quick else [single_put, 64 * MIB, 256 * MIB, 1024 * MIB]

    def label(size: int) -> str:
        return f"{size // MIB} MiB" if size % MIB == 0 else f"{size / MIB:.1f} MiB (the largest sent in one Put Blob)"

    print(f"[4] memory: one attachment of {', '.join(label(s) for s in sizes)}, each in a child process", flush=True)
    env = dict(os.environ)
    env["BENCH_TOKEN"] = world.runtime.altinn.token()
    figures: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}
    for i, size in enumerate(sizes):
        rnd = random.Random(world.seed + 4 + i)
        warm, big = world.sim.add(ORG, APP, [[ElementSpec(size=2000), attachment(rnd, 5 * MIB, 1)], [ElementSpec(size=2000), attachment(rnd, size, 1)]])
        probe = [sys.executable, "-m", "devtools.memprobe", f"{ORG}/{APP}", big["id"], "--warmup", warm["id"]]
        warm_spec = f"{world.data_url(warm['id'], warm['elements'][1][0])}:{warm['elements'][1][1]}"
        big_spec = f"{world.data_url(big['id'], big['elements'][1][0])}:{size}"
        copy = [sys.executable, "-m", "bench.basecopy", world.azurite.connection_string, world.baseline_container.container_name, warm_spec, big_spec]
        runs = [probe, copy] if i % 2 == 0 else [copy, probe]
        out = {}
        for cmd in runs:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
            if proc.returncode != 0:
                report.check(f"[4] {label(size)}: {cmd[2]} ran", False, proc.stderr[-500:])
                return
            out[cmd[2]] = json.loads(proc.stdout.strip().splitlines()[-1])
        ours, base = out["devtools.memprobe"], out["bench.basecopy"]
        report.check(f"[4] {label(size)} archived whole", ours.get("outcome") == "archived" and ours["bytes"] == size + 2000, json.dumps(ours))
        figures[size] = (ours, base)
        report.row(4, f"memory: one {label(size)} attachment, archived in a child process", "peak RSS growth",
                   f"{ours['growth'] / MIB:.1f} MiB", f"{base['growth'] / MIB:.1f} MiB", ratio(ours["growth"], base["growth"]),
                   "<= 64 MiB" if size == sizes[-1] else "", ours["growth"] <= 64 * MIB if size == sizes[-1] else None)  # fmt: skip
    small_size, big_size = 64 * MIB, sizes[-1]
    g_small, g_big = figures[small_size][0]["growth"], figures[big_size][0]["growth"]
    report.check(f"[4] peak RSS growth for {big_size // MIB} MiB <= 64 MiB", g_big <= 64 * MIB, f"{g_big / MIB:.1f} MiB")
    report.row(4, "memory does not grow with size", f"growth at {big_size // MIB} MiB / growth at {small_size // MIB} MiB (size x{big_size // small_size})",
               ratio(g_big, g_small), ratio(figures[big_size][1]["growth"], figures[small_size][1]["growth"]), "",
               "<= 1.5", g_big <= 1.5 * g_small)  # fmt: skip
    ours, base = figures[big_size]
    mb_ours, mb_base = ours["bytes"] / MB / ours["seconds"], base["bytes"] / MB / base["seconds"]
    report.row(4, f"single {big_size // MIB} MiB attachment (one element: block streaming, sha256, verified commit)", "MB/s",
               fmt(mb_ours), fmt(mb_base), ratio(mb_ours, mb_base))  # fmt: skip


# -- 5. webhook -------------------------------------------------------------------------------


def _events(world: World, n: int) -> list[bytes]:
    out = []
    for i in range(n):
        party, guid = str(60_000_000 + i), str(uuid.uuid4())
        event = {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "time": "2026-03-31T21:59:00.1234567Z",
            "type": "app.instance.process.completed",
            "source": f"{world.sim.apps_url}/{ORG}/{APP}/instances/{party}/{guid}",
            "resource": f"urn:altinn:resource:app_{ORG}_{APP}",
            "resourceinstance": f"{party}/{guid}",
            "subject": f"/party/{party}",
        }
        out.append(json.dumps(event).encode())
    return out


def _queue_text(body: bytes) -> str:
    """What the webhook queues for an event body, for the baseline to write as is."""
    from shared.events import InstanceRef, queue_message

    event = json.loads(body)
    party, guid = event["resourceinstance"].split("/")
    return json.dumps(queue_message(None, InstanceRef(ORG, APP, party, guid), via="webhook"))


def webhook(world: World, report: Report) -> None:
    import azure.functions as func
    import requests

    import function_app
    from devtools.localhost import LocalHost

    n = 500 if world.quick else 5000
    clients = 8
    print(f"[5] webhook: {n} events in process (one thread), {n} through the local host ({clients} clients)", flush=True)
    receive = user_functions(function_app.app)["receive"]
    queue = world.runtime.events_queue
    headers = {"Content-Type": "application/json; charset=utf-8"}
    bad: list[int] = []
    cpu = {"ours": 0.0, "base": 0.0}

    # 5a. in process, one thread: receive() against the queue write alone.
    def ours_inproc(bodies: Sequence[bytes]) -> float:
        requests_ = [func.HttpRequest(method="POST", url="http://localhost/api/events", headers=headers, params={}, route_params={}, body=b) for b in bodies]
        c0, t0 = time.thread_time(), time.perf_counter()
        for req in requests_:
            resp = receive(req)
            if resp.status_code != 202:
                bad.append(resp.status_code)
        cpu["ours"] += time.thread_time() - c0
        return time.perf_counter() - t0

    def base_inproc(bodies: Sequence[bytes]) -> float:
        texts = [_queue_text(b) for b in bodies]
        c0, t0 = time.thread_time(), time.perf_counter()
        for text in texts:
            queue.send_message(text)
        cpu["base"] += time.thread_time() - c0
        return time.perf_counter() - t0

    receive(func.HttpRequest(method="POST", url="http://localhost/api/events", headers=headers, params={}, route_params={}, body=_events(world, 1)[0]))  # warm
    events = _events(world, n)
    t_ours, t_base = alternate(chunks(events, n // 100), ours_inproc, base_inproc)
    report.check("[5] every in-process event answered 202", not bad, f"{len(bad)} others, e.g. {bad[:3]}")
    report.row(5, f"webhook in process, one thread: {n} events, each validated and queued in Azurite", "events/s (baseline: the queue write alone)",
               fmt(n / t_ours), fmt(n / t_base), ratio(n / t_ours, n / t_base), "", None)  # fmt: skip
    report.row(5, "webhook in process", "CPU per event (one core)", f"{cpu['ours'] / n * 1e6:,.0f} us", f"{cpu['base'] / n * 1e6:,.0f} us",
               ratio(cpu["ours"], cpu["base"]) + "x", "", None)  # fmt: skip
    world.clear_queues()

    # 5b. through the local host (HTTP, function key, the queue write), clients in parallel, against
    # the same host running a bare function (the body straight onto the queue), and the queue write alone.
    receive_only = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
    receive_only._function_builders.append(function_app.receive)  # without the archive trigger, which would consume the queue
    bare = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

    @bare.function_name("receive")
    @bare.route(route="events", methods=["POST"])
    def bare_receive(req: func.HttpRequest) -> func.HttpResponse:
        queue.send_message(req.get_body().decode())
        return func.HttpResponse('{"status": "accepted"}', status_code=202, headers={"Content-Type": "application/json"})  # answers like ours

    # Both functions run in the same local host, which sets TCP_NODELAY like the real host (Kestrel):
    # with Nagle on, a response written as headers and then a body waits ~40 ms for a delayed ACK.
    latencies: dict[str, list[float]] = {"ours": [], "bare": [], "queue": []}
    elapsed: dict[str, float] = {"ours": 0.0, "bare": 0.0, "queue": 0.0}
    lock = threading.Lock()
    host_json = ROOT / "host.json"
    with (
        LocalHost(receive_only, connection_string=world.azurite.connection_string, host_json=host_json) as ours_host,
        LocalHost(bare, connection_string=world.azurite.connection_string, host_json=host_json) as bare_host,
    ):
        urls = {"ours": ours_host.function_url("receive"), "bare": bare_host.function_url("receive")}
        sessions = {key: [requests.Session() for _ in range(clients)] for key in urls}
        for key, group in sessions.items():
            for session in group:
                session.trust_env = False
                session.post(urls[key], data=_events(world, 1)[0], headers=headers, timeout=30)  # connect, warm

        def fan_out(key: str, bodies: Sequence[bytes]) -> float:
            def worker(k: int) -> None:
                mine = []
                for body in bodies[k::clients]:
                    t = time.perf_counter()
                    if key == "queue":
                        queue.send_message(_queue_text(body))
                    else:
                        resp = sessions[key][k].post(urls[key], data=body, headers=headers, timeout=30)
                        if resp.status_code != 202:
                            bad.append(resp.status_code)
                    mine.append(time.perf_counter() - t)
                with lock:
                    latencies[key].extend(mine)

            t0 = time.perf_counter()
            threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed[key] += time.perf_counter() - t0
            return elapsed[key]

        order = ["ours", "bare", "queue"]
        for i, chunk in enumerate(chunks(_events(world, n), n // 100)):
            for key in order[i % 3 :] + order[: i % 3]:  # rotate who goes first
                fan_out(key, chunk)
        for group in sessions.values():
            for session in group:
                session.close()
    world.clear_queues()
    report.check("[5] every event through the host answered 202", not bad, f"{len(bad)} others, e.g. {bad[:3]}")
    ours_rate, bare_rate = n / elapsed["ours"], n / elapsed["bare"]
    report.row(5, f"webhook through the local host: {n} events, {clients} clients", "events/s (baseline: the same host running a bare function "
               "that puts the body on the queue)", fmt(ours_rate), fmt(bare_rate), ratio(ours_rate, bare_rate))  # fmt: skip
    for p in (50, 99):
        ours, base, floor = (percentile(latencies[k], p) for k in ("ours", "bare", "queue"))
        report.row(5, "webhook through the local host", f"p{p} latency (queue write alone, same clients: {floor * 1000:.1f} ms)",
                   f"{ours * 1000:.1f} ms", f"{base * 1000:.1f} ms", ratio(ours, base) + "x")  # fmt: skip


# -- 6. cold start ----------------------------------------------------------------------------

HEAVY = ("azure.storage", "azure.identity", "azure.core", "azure.monitor", "opentelemetry", "requests", "urllib3", "jwt", "cryptography")


def _import_ms(statement: str) -> float:
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", statement], cwd=ROOT, capture_output=True, text=True, check=True)
    total = 0
    for line in out.stderr.splitlines():
        if line.startswith("import time:") and "self [us]" not in line:
            total += int(line.split(":", 1)[1].split("|", 1)[0])
    return total / 1000


def cold_start(world: World, report: Report) -> None:
    repeats = 3 if world.quick else 9
    print(f"[6] cold start: -X importtime, {repeats} alternating pairs", flush=True)
    ours, base, deltas = [], [], []
    for i in range(repeats):
        if i % 2 == 0:
            a, b = _import_ms("import function_app"), _import_ms("import azure.functions")
        else:
            b, a = _import_ms("import azure.functions"), _import_ms("import function_app")
        ours.append(a)
        base.append(b)
        deltas.append(a - b)
    probe = (
        "import json, sys; before = set(sys.modules); import azure.functions; mid = set(sys.modules); import function_app; "
        "after = set(sys.modules); print(json.dumps({'base': len(mid - before), 'added': sorted(after - mid)}))"
    )
    mods = json.loads(subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True).stdout)
    heavy = [m for m in mods["added"] if m.startswith(HEAVY) or m in HEAVY]
    delta = median(deltas)
    report.row(6, "cold start: import function_app vs import azure.functions alone (-X importtime, sum of self times, median of pairs)",
               "import time", f"{median(ours):.0f} ms", f"{median(base):.0f} ms", f"+{delta:.0f} ms", "<= +150 ms", delta <= 150)  # fmt: skip
    report.row(6, "cold start", "modules imported beyond azure.functions (of which heavy: Azure SDK, requests, JWT, cryptography)",
               f"{len(mods['added'])} ({len(heavy)} heavy)", f"{mods['base']} (azure.functions itself)", "", "0 heavy", not heavy)  # fmt: skip
    report.check("[6] no Azure SDK client, requests, JWT or cryptography imported by function_app", not heavy, ", ".join(heavy[:5]))

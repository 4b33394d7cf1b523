"""Play the Azure Functions host for this app (``function_app.py``), locally, against Azurite.

Azure Functions Core Tools cannot run here, so ``LocalHost`` runs the app's Python v2
``FunctionApp`` the way the Functions host does, with what it needs read from the ``FunctionApp``
object (``app.get_functions()``: names, triggers, auth levels) and from ``host.json``. It is this
app's host, not a general one: it implements what ``function_app.py`` uses and refuses, at
construction and with a message saying so, an app that uses anything else.

What it reproduces (each point is traced in the code to the Microsoft source it follows):

* HTTP triggers on literal routes under ``/{routePrefix}/`` (``extensions.http.routePrefix``,
  default ``api``), matched case-insensitively, allowed methods (anything else is 404), function
  keys for the ``function`` and ``admin`` levels (``?code=`` or ``x-functions-key``, else 401),
  an exception in the function -> 500 with an empty body, ``None`` -> 204.
* Queue triggers (``extensions.queues``), as the storage extension's queue listener does it:
  batches of ``batchSize`` (default 16, at most 32); a new batch once the messages in flight drop
  to ``newBatchThreshold`` (default ``batchSize / 2`` times the processor count, 1 processor with
  ``WEBSITE_SKU=Dynamic``), so up to ``batchSize + newBatchThreshold`` at once; polling that backs
  off while the queue is empty or missing (randomized exponential from 100 ms up to
  ``maxPollingInterval``, default 1 minute) and starts over when a message is found; the trigger
  queue is never created (it is polled until it exists), ``{queue}-poison`` is created when the
  first message is moved there; a 10 minute lease renewed at half time; ``messageEncoding``
  (``base64`` default, or ``none``); ``maxDequeueCount`` (default 5); ``visibilityTimeout``
  before a retry (default 00:00:00); a message whose dequeue count is already above the maximum,
  or that is not valid base64, goes to poison without an invocation.
* ``functionTimeout`` (default 00:30:00, 00:05:00 with ``WEBSITE_SKU=Dynamic``; ``-1`` for none):
  an invocation still running then (plus the host's 2 s grace) has failed: a queue message is
  released for a retry after ``visibilityTimeout`` (a failed attempt, poisoned at the maximum),
  HTTP gets 500, a timer run is logged as failed.
* Timer triggers: ``%NAME%`` resolved from the environment, six-field NCRONTAB expressions (UTC)
  or a ``hh:mm:ss`` interval, ``runOnStartup``, and with ``useMonitor`` (default true; off for
  schedules more frequent than once a minute) the schedule status (Last/Next/LastUpdated) kept as
  a blob ``azure-webjobs-hosts/timers/{hostId}/Host.Functions.{name}/status``: a host started
  after an occurrence was missed (no host was running) invokes once, at once, with
  ``past_due=True``; an occurrence that runs late for any other reason is not past due. Timers
  are scheduled with ``run_timers=True``; ``run_timer(name, past_due=...)`` invokes one now.

What differs, and why:

* One storage connection string serves every trigger (``connection`` names are not looked up).
* Python cannot stop a thread. At ``functionTimeout`` the real host restarts the language worker
  process, which ends the invocation; LocalHost abandons it instead: it stops renewing the
  message's lease, settles the message as failed and ignores the result, but the thread runs on
  (its side effects still happen) until the function returns. ``stats`` counts these as
  ``timeouts``.
* ``concurrency=`` (``--concurrency``) is a local knob with no host.json equivalent: N runs up to N
  messages of a queue at once (batches of ``min(batchSize, N)``, the next batch when at most
  ``N - batch`` are in flight). Without it, host.json decides, as in Azure.
* Polling errors of any kind are logged once and backed off like an empty queue, so a paused
  Azurite does not stop a listener (the real listener backs off for not-found, a queue being
  deleted and 5xx, and reports other errors to the host).
* Every invocation a listener hands out runs at once, on a thread of its own: the Python worker's
  thread pool (``PYTHON_THREADPOOL_THREAD_COUNT``), which can run fewer at a time, is not modelled.
* No timer singleton lock: two LocalHosts with ``run_timers=True`` both fire (the real host lets
  one instance of the app run a schedule). No dynamic concurrency (``concurrency`` in host.json).
* Not supported, refused at construction because this app does not use them: route templates,
  output bindings (the app writes its queues with azure-storage-queue), ``async def`` functions,
  ``func.Context`` (or any parameter besides the trigger's), triggers other than HTTP, queue and
  timer.

The package, by concern: ``hostjson`` (host.json, its defaults and checks; TimeSpan strings; the host
ID), ``bindings`` (the app's functions, and what is refused), ``invocation`` (calling a function with
``functionTimeout``, the stats), ``http`` (server, routes, keys), ``queues`` (the queue listener),
``timers`` (schedules, the status blob, the timer loop), ``host`` (``LocalHost``, which starts and stops
them all) and ``cli`` (``python -m devtools.localhost --app function_app:app --port 7071`` runs an app
until Ctrl-C).
"""

from .host import LocalHost
from .hostjson import POLL_MINIMUM, HostSettings, default_host_id, parse_timespan, processor_count
from .invocation import FunctionTimeoutException
from .queues import BACKOFF_RANDOMIZATION
from .queues import _Backoff as _Backoff
from .timers import _Schedule as _Schedule

__all__ = [
    "BACKOFF_RANDOMIZATION",
    "POLL_MINIMUM",
    "FunctionTimeoutException",
    "HostSettings",
    "LocalHost",
    "default_host_id",
    "parse_timespan",
    "processor_count",
]

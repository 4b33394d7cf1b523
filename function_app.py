"""Azure Functions entry points (v2 programming model). Thin: parse, call shared/, map the result.

* ``receive``  POST /api/events (function key): validate an Altinn CloudEvent, queue it, 2xx once queued.
* ``archive``  queue trigger on ``altinn-events``: archive the instance, then confirm it to Altinn.
* ``catchup``  timer (``%CATCHUP_SCHEDULE%``): enqueue completed instances our org has not confirmed.

All logic is in the ``shared`` package; heavy libraries load on first use, not here.
"""

from __future__ import annotations

import json

import azure.functions as func

from shared.config import EVENTS_QUEUE


class _FunctionApp(func.FunctionApp):
    """``func.FunctionApp`` whose ``get_functions()`` may be called more than once.

    azure-functions 1.x remembers the names it indexed and raises on a second call; the host calls
    it once, but tests and tools that inspect the app call it again.
    """

    def get_functions(self) -> list[func.Function]:
        self.functions_bindings = None
        return super().get_functions()


app = _FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


@app.function_name("receive")
@app.route(route="events", methods=["POST"])
def receive(req: func.HttpRequest) -> func.HttpResponse:
    from shared import telemetry
    from shared.pipeline import receive_event

    telemetry.configure()
    reply = receive_event(req.get_body(), req.headers.get("content-type"))
    return func.HttpResponse(
        json.dumps(reply.body),
        status_code=reply.status,
        headers={"Content-Type": reply.content_type, "Cache-Control": "no-store"},
    )


@app.function_name("archive")
@app.queue_trigger(arg_name="msg", queue_name=EVENTS_QUEUE, connection="AzureWebJobsStorage")
def archive(msg: func.QueueMessage) -> None:
    from shared import telemetry
    from shared.pipeline import handle_message

    telemetry.configure()
    body, dequeue_count = msg.get_body(), getattr(msg, "dequeue_count", None)
    with telemetry.message_context(body, dequeue_count):
        handle_message(body, dequeue_count=dequeue_count)


@app.function_name("catchup")
@app.timer_trigger(schedule="%CATCHUP_SCHEDULE%", arg_name="timer", run_on_startup=False, use_monitor=True)
def catchup(timer: func.TimerRequest) -> None:
    from shared import catchup as catchup_run
    from shared import telemetry

    telemetry.configure()
    catchup_run.run_timer(past_due=bool(getattr(timer, "past_due", False)))

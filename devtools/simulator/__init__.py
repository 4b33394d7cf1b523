"""An Altinn 3 + Maskinporten simulator: real HTTP servers on 127.0.0.1 for tests and local runs.

It is meant to be as unfriendly as the real services, so that a client that reads from the wrong API,
trusts the wrong field or pages carelessly fails a test. Every Altinn behaviour below is taken from
Altinn's own code (altinn-storage, app-lib-dotnet, altinn-events); the comments next to the code name
the repository and file.

The package is split by service; ``Simulator`` (core.py) composes one mixin per service:

- ``maskinporten`` (clients, the token endpoint), ``authentication`` (the exchange, the Altinn token),
- ``storage`` (instance, data, complete, substatus) and ``query`` (the instance query),
- ``apps`` (the app API), ``events`` (push, validation, list/delete) and ``subscriptions`` (create),
- ``setup_api`` (apps, parties, instances), ``faults`` (injected faults),

on top of ``http`` (server, handler, response helpers), ``model`` and ``instance`` (what is held and
how storage renders it), ``content`` (generated bodies, form XML/JSON) and ``dotnet`` (time, JSON and
URLs as .NET writes them). ``cli`` is ``python -m devtools.simulator``.

Two origins, both bound when the ``Simulator`` is made (so their URLs are known before ``start()``):

- ``sim.url``, the **platform**: storage (``/storage/api/v1/...``), events (``/events/api/v1/...``),
  the token exchange (``/authentication/api/v1/exchange/maskinporten``) and Maskinporten (issuer
  ``sim.url + "/maskinporten/"``, token endpoint ``issuer + "token"``).
- ``sim.apps_url``, the **app host** of every org: only the app API, ``/{org}/{app}/instances/...``.

Anything else on either origin is 404. Maskinporten checks what the real one checks (grant signature
against the registered key or certificate, ``aud``, ``exp - iat <= 120``, unused ``jti``, scopes);
Altinn calls need a token from the exchange (401 without a valid one).

The storage API (what a receiver should use):

- ``GET instances/{party}/{guid}``: storage's document (camelCase, nulls omitted, ``selfLinks.platform``;
  ``selfLinks.apps`` only if the stored document has one), no ``instanceOwner.party``. The org may read
  hard-deleted instances and their data.
- ``GET .../data/{id}``: exactly the stored bytes, the stored ``Content-Type``, ``Content-Disposition``
  with the filename; 400 when the element's data type is no longer in the app's metadata.
- ``POST .../complete``: body ignored, never 409 (the process is not checked), 403 (empty body) when the
  app's policy denies it (``sim.app(org, app).complete_allowed = False``) or the instance is unknown;
  idempotent.
- ``PUT .../substatus`` ``{"label", "description"}``: 400 without a label, 403 for another org.
- ``GET instances?...``: ordered by ``lastChanged`` descending (``order=asc:lastChanged`` to reverse),
  keyset paging on (lastChanged, internal id) with storage's own SQL quirk (so ties at a page boundary
  are skipped or repeated), ``next`` whenever the page is full (the last page may be empty), the
  continuation token ``{ticks};{id}`` URL-encoded twice inside ``next``.

The app API (``sim.apps_url``), as app-lib serves it: the instance is app-lib's DTO
(``instanceOwner.party`` with the submitter's name and national id, enums as numbers, nulls written,
500 when an element's data type is gone from the app's metadata); a form element (data type with
``appLogic.classRef``) is the model deserialized and re-serialized (JSON, or XML for
``Accept: application/xml``), never the stored bytes; an app with ``deployed = False`` answers 404.

Events: subscriptions need an https ``endPoint`` (http only for loopback hosts here), an identical POST
returns the existing subscription (201) and sends a new validation event; a failed validation is retried
after ``validation_retry_delays`` and then given up. ``sim.publish(inst)`` pushes an app event to every
validated matching subscription.

Set-up: ``sim.add_instance(org, app, [ElementSpec(...)], hard_deleted=..., ...)`` creates an instance
(and, on first use, the app: data type ``model`` is a form, every other one a plain attachment);
``sim.add_app(org, app, data_types=..., complete_allowed=..., deployed=...)`` registers an app's
metadata explicitly and ``sim.app(org, app)`` returns it for changes; ``sim.load_instance(doc,
contents)`` serves an instance document exactly as given (Altinn's own test data, say);
``sim.register_party(...)`` feeds the register (the app API's party, events' alternative subjects).
``inst.platform_url``/``inst.data_url(id)`` are on storage, ``inst.app_url``/``inst.app_data_url(id)``
on the app API.

Data bodies are generated on the fly (deterministic per element), or are exactly
``ElementSpec.content``; a GiB-sized element costs no memory. Form elements get a well-formed XML
document of the requested size. The served metadata is ``SimInstance.elements``, which tests may edit
(a wrong ``size``, say) without changing the body (``inst.stored_size(id)`` is the body's length).
State the documents are rendered from (``confirmed_by``, ``hard_deleted``, ``process_ended``,
``substatus``, ``instance_owner``, ``last_changed``) may be changed too; ``sim.confirmations``,
``sim.substatus_updates``, ``sim.validation_attempts``, ``sim.calls`` and ``sim.requests`` record what
clients did.

Faults are injected per endpoint (platform: ``token``, ``exchange``, ``instance``, ``data``,
``complete``, ``substatus``, ``query``, ``subscriptions``; app host: ``app-instance``, ``app-data``,
``app-complete``): status codes, delays, truncated bodies and connection resets. They are checked in the
order they were added; the first that applies is used. ``match`` is a substring of the request target
(path and query). With ``probability`` a fault is persistent and ``times`` is ignored. ``sim.calls``
counts requests per endpoint on both origins.

Example::

    with Simulator() as sim:
        sim.register_client("my-client", public_key_pem=pem, kid="k1")
        inst = sim.add_instance("ttd", "app", [ElementSpec(), ElementSpec("vedlegg", "application/pdf", 10 << 20, "a.pdf")])
        ...  # the client reads inst.platform_url and its data, then POSTs .../complete
        assert sim.confirmations[0][0] == inst.id and sim.calls["app-instance"] == 0

``python -m devtools.simulator --port 8070`` runs one by hand until Ctrl-C.
"""

from .cli import main
from .constants import (
    APP_ENDPOINTS,
    DEFAULT_SCOPES,
    ENDPOINTS,
    EVENTS_SUBSCRIBE_SCOPE,
    FORM_CLASS_REF,
    JWT_BEARER,
    PLATFORM_ENDPOINTS,
    READ_SCOPE,
    WRITE_SCOPE,
)
from .content import iter_content
from .core import Simulator
from .instance import SimInstance
from .maskinporten import generate_client_key
from .model import ElementSpec, SimApp, attachment_data_type, form_data_type

__all__ = [
    "APP_ENDPOINTS",
    "DEFAULT_SCOPES",
    "ENDPOINTS",
    "EVENTS_SUBSCRIBE_SCOPE",
    "FORM_CLASS_REF",
    "JWT_BEARER",
    "PLATFORM_ENDPOINTS",
    "READ_SCOPE",
    "WRITE_SCOPE",
    "ElementSpec",
    "SimApp",
    "SimInstance",
    "Simulator",
    "attachment_data_type",
    "form_data_type",
    "generate_client_key",
    "iter_content",
    "main",
]

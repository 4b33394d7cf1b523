"""Typed models of what crosses our boundaries, each parsed strictly and refused when it does not fit.

* :class:`InstanceRef` - what identifies an instance; everything else is derived from configuration.
* :class:`Instance` and :class:`DataElement` - Altinn storage's instance document
  (``GET {platform}/storage/api/v1/instances/{partyId}/{instanceGuid}``). Upstream is untrusted:
  :func:`parse_instance` fails closed, and every refusal names the field
  (:class:`~shared.errors.InvalidInstance`, a permanent failure: the same document fails the same way
  every time, so retrying cannot help).
* :class:`QueueMessage` - the message on ``altinn-events`` that the webhook, catch-up, the CLI and
  the retry schedule write, and the archive function reads (:func:`parse_message`).
* :class:`Outcome`, :class:`FailureClass` and :class:`ScanResult` - the closed sets of names that
  logs, metrics, manifests and reports use.

Pure code: no I/O. One package, a module per shape: ``names`` (enums, JSON helpers), ``ref``,
``instance``, ``message``; import them from ``shared.models``.

The shapes follow Altinn's own models (Altinn/altinn-storage at d9364e40):
``src/Storage.Interface/Models/Instance.cs`` (``id`` = ``{partyId}/{instanceGuid}``, ``appId``,
``org``, ``process``, ``status``, ``completeConfirmations``, ``data``, nulls omitted),
``src/Storage.Interface/Models/DataElement.cs`` (``id``, ``dataType``, ``contentType``,
``filename``, ``size`` as a ``long``, ``fileScanResult``) and
``src/Storage.Interface/Enums/FileScanResult.cs`` (NotApplicable, Pending, Clean, Infected).
"""

from shared.models.instance import DATA_ID, DataElement, Instance, parse_instance
from shared.models.message import MESSAGE_VERSION, VIAS, EventInfo, QueueMessage, RetryState, message_document, parse_message
from shared.models.names import FailureClass, Outcome, ScanResult, camel, iso, parse_time, to_json_dict, utc_now
from shared.models.ref import InstanceRef

__all__ = [
    "DATA_ID",
    "MESSAGE_VERSION",
    "VIAS",
    "DataElement",
    "EventInfo",
    "FailureClass",
    "Instance",
    "InstanceRef",
    "Outcome",
    "QueueMessage",
    "RetryState",
    "ScanResult",
    "camel",
    "iso",
    "message_document",
    "parse_instance",
    "parse_message",
    "parse_time",
    "to_json_dict",
    "utc_now",
]

"""Public constants: grant type, scopes, fault endpoint names, the form data type's class."""

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
DEFAULT_SCOPES = "altinn:serviceowner/instances.read altinn:serviceowner/instances.write"
READ_SCOPE = "altinn:serviceowner/instances.read"
WRITE_SCOPE = "altinn:serviceowner/instances.write"
EVENTS_SUBSCRIBE_SCOPE = "altinn:events.subscribe"
PLATFORM_ENDPOINTS = frozenset({"token", "exchange", "instance", "data", "complete", "substatus", "query", "subscriptions"})
APP_ENDPOINTS = frozenset({"app-instance", "app-data", "app-complete"})
ENDPOINTS = PLATFORM_ENDPOINTS | APP_ENDPOINTS
FORM_CLASS_REF = "Altinn.App.Models.model.Model"

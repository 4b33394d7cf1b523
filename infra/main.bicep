// altinn-mottak: receives Altinn 3 events (HTTP, function key), queues them, archives instances
// to blob storage. One resource group, deployed with `azd up` or `az deployment group create`
// (see docs/deploy.md). Small modules under app/; every resource is declared in this repo so a
// platform or security team can read all of it.
targetScope = 'resourceGroup'

// ---- Environment ---------------------------------------------------------------------------------

@minLength(1)
@maxLength(64)
@description('Environment name (azd: AZURE_ENV_NAME), e.g. test or prod. Seeds the resource names.')
param environmentName string

@minLength(1)
@description('Region of all resources; must offer the Flex Consumption plan.')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string = resourceGroup().location

// ---- Function app ----------------------------------------------------------------------------------

// Python versions: those Flex Consumption runs (3.10, 3.11, 3.12, 3.13 in Microsoft's
// Get-AzFunctionAppFlexConsumptionRuntime reference, Azure/azure-powershell
// src/Functions/Functions/help/Get-AzFunctionAppFlexConsumptionRuntime.md; per region:
// `az functionapp list-flexconsumption-runtimes --location <region> --runtime python`) that this
// app runs on: 3.11 and later (pyproject.toml requires-python; the code imports datetime.UTC), and
// not 3.13 yet: the pinned azure-functions==1.26.0 (requirements.txt) declares
// Requires-Python <3.13, so the remote build could not install it (on 3.13 only the
// azure-functions 2.x line installs; what else changes there:
// https://learn.microsoft.com/azure/azure-functions/python-313-changes).
// CI runs the unit tests on each allowed version (Makefile PYTHON_VERSIONS, `make test-pythons`;
// tests/infra keeps the two lists equal).
@description('Python version of the Flex Consumption runtime. 3.11 is the version CI runs the whole suite on; the unit tests run on every allowed version.')
@allowed([
  '3.11'
  '3.12'
])
param pythonVersion string = '3.11'

// 2048 and 4096 MB only: 512 MB is reported refused for Flex Consumption apps, and Microsoft's
// own Flex quickstart allows the same two (Azure/azure-quickstart-templates
// quickstarts/microsoft.web/function-app-flex-managed-identities/main.bicep: @allowed([2048,4096]);
// hashicorp/terraform-provider-azurerm function_app_flex_consumption: "2048 or 4096").
@description('Memory per instance (MB) on the Flex Consumption plan.')
@allowed([
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Webhook requests one instance serves at once before Flex Consumption adds one (HTTP perInstanceConcurrency; reasoning in app/api.bicep). 1-1000.')
@minValue(1)
@maxValue(1000)
param httpPerInstanceConcurrency int = 50

// 40 is the lowest maximum Flex Consumption accepts (Azure/azure-powershell
// src/Functions/Functions.Autorest/custom/New-AzFunctionApp.ps1: MaximumInstanceCount ValidateRange(40, 1000)).
@description('Maximum instances the app scales out to: bounds cost and the parallel load on Altinn (40 to 1000 on Flex Consumption).')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Spread the app over availability zones. Flex Consumption then keeps at least two always-ready instances (billed). Needs a region with zone support for Flex.')
param zoneRedundant bool = false

// ---- Storage, monitoring, alerting -------------------------------------------------------------

@description('Storage replication of the archive account. Default GZRS (zones + paired region); ZRS/LRS where the region or policy rules geo-replication out.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
  'Standard_RAGRS'
  'Standard_RAGZRS'
])
param storageSkuName string = 'Standard_GZRS'

@description('Days deleted or overwritten blobs and deleted containers stay restorable.')
@minValue(1)
@maxValue(365)
param blobDeleteRetentionDays int = 30

@description('Days Log Analytics and Application Insights keep logs.')
@minValue(30)
@maxValue(730)
param logRetentionInDays int = 90

@description('Optional e-mail address for the poison-queue alert.')
param alertEmailAddress string = ''

@description('Optional: principal id of an operator (azd: the signed-in user; production: an Entra group) granted the roles to set the Maskinporten key and run the operations CLI. Empty: none.')
param operatorPrincipalId string = ''

@description('Type of operatorPrincipalId.')
@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param operatorPrincipalType string = 'User'

@description('Optional: principal id of the case system that consumes the hand-off queue (altinn-archived), e.g. its managed identity. Granted Storage Queue Data Message Processor on that queue only. Empty: none.')
param handoffConsumerPrincipalId string = ''

@description('Type of handoffConsumerPrincipalId.')
@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param handoffConsumerPrincipalType string = 'ServicePrincipal'

@description('Days every version of an archived blob (container altinn-data) stays immutable: version-level WORM with an unlocked time-based retention policy. 0 = off. Not with the current code (it sets metadata on manifest.json), and set it when the container is first created: docs/deploy.md, Archive immutability.')
@minValue(0)
@maxValue(146000)
param archiveImmutabilityDays int = 0

// ---- Maskinporten key (Key Vault) ----------------------------------------------------------------

@description('Key Vault secret that holds the Maskinporten private key; MASKINPORTEN_PRIVATE_KEY references it.')
param maskinportenKeyName string = 'maskinporten-private-key'

// ---- Application settings (the names are the contract in shared/config.py) -----------------------

@description('ALTINN_ENVIRONMENT: tt02 (test) or production; picks the Altinn and Maskinporten hosts.')
@allowed([
  'tt02'
  'production'
])
param altinnEnvironment string = 'tt02'

@minLength(3)
@description('ALTINN_APPS: the apps to archive, comma separated org/app, e.g. ttd/my-app.')
param altinnApps string

@description('ALTINN_EVENT_TYPES: event types to archive, comma separated.')
param altinnEventTypes string = 'app.instance.process.completed'

@description('ALTINN_PLATFORM_URL: override of the platform base URL. Empty: from ALTINN_ENVIRONMENT.')
param altinnPlatformUrl string = ''

@description('ALTINN_APPS_URL: override of the app host, may contain {org}. Empty: from ALTINN_ENVIRONMENT.')
param altinnAppsUrl string = ''

@description('MASKINPORTEN_URL: override of the Maskinporten issuer. Empty: from ALTINN_ENVIRONMENT.')
param maskinportenUrl string = ''

@minLength(1)
@description('MASKINPORTEN_CLIENT_ID: the Maskinporten integration\'s client id.')
param maskinportenClientId string

@description('MASKINPORTEN_KID: key id, when the key is registered on the client. Empty: none.')
param maskinportenKid string = ''

@description('MASKINPORTEN_CERTIFICATE: PEM certificate chain sent as x5c (business certificate). Public data. Empty: none.')
param maskinportenCertificate string = ''

@description('MASKINPORTEN_SCOPES: space separated scopes.')
param maskinportenScopes string = 'altinn:serviceowner/instances.read altinn:serviceowner/instances.write'

@description('ARCHIVE_CONTAINER: blob container for archived instances (created by this template).')
@minLength(3)
@maxLength(63)
param archiveContainerName string = 'altinn-data'

@description('ARCHIVE_PARALLEL_DOWNLOADS: data elements of one instance downloaded in parallel.')
@minValue(1)
@maxValue(32)
param archiveParallelDownloads int = 4

@description('ARCHIVE_BLOCK_SIZE_MIB: block size (MiB) of streamed blob uploads.')
@minValue(1)
@maxValue(100)
param archiveBlockSizeMiB int = 8

@description('ARCHIVE_MIN_DOWNLOAD_RATE_KIB: slowest download (KiB/s) of a data element before the attempt is given up (it may take 60 s + size / this rate).')
@minValue(1)
@maxValue(1048576)
param archiveMinDownloadRateKiB int = 1024

@description('ARCHIVE_RETRY_SCHEDULE: seconds before each next attempt after a transient failure, comma separated; the last one repeats.')
param archiveRetrySchedule string = '60,120,300,900,1800,3600'

@description('ARCHIVE_RETRY_MAX_HOURS: hours an instance is retried after transient failures before it is parked in the poison queue.')
@minValue(1)
@maxValue(168)
param archiveRetryMaxHours int = 24

@description('CATCHUP_SCHEDULE: NCRONTAB (6 fields, UTC) of the catch-up timer. Default: hourly at minute 7.')
param catchupSchedule string = '0 7 * * * *'

@description('CATCHUP_MAX_INSTANCES: most instances one catch-up run enqueues (the next run continues).')
@minValue(1)
@maxValue(100000)
param catchupMaxInstances int = 5000

@description('CATCHUP_TIME_BUDGET_SECONDS: time one catch-up run may take; below functionTimeout in host.json.')
@minValue(10)
@maxValue(1500)
param catchupTimeBudgetSeconds int = 600

@description('CATCHUP_REFUSED_QUIET_HOURS: hours catch-up leaves an instance alone after Altinn refused its confirmation.')
@minValue(0)
@maxValue(720)
param catchupRefusedQuietHours int = 24

@description('ALTINN_SUBSTATUS_LABEL: the substatus the submitter sees once the instance is archived and confirmed; one text, or org/app=text entries separated by ";". Empty = none.')
@maxLength(4000)
param altinnSubstatusLabel string = ''

@description('ALTINN_SUBSTATUS_DESCRIPTION: the substatus description, in the same form. Empty = none.')
@maxLength(4000)
param altinnSubstatusDescription string = ''

// ---- Names -------------------------------------------------------------------------------------

var abbrs = loadJsonContent('abbreviations.json')
var resourceToken = toLower(uniqueString(subscription().id, resourceGroup().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
  application: 'altinn-mottak'
}
var functionAppName = '${abbrs.webSitesFunctions}${resourceToken}'
var deploymentContainerName = 'app-package'

// Queue names: shared.config.EVENTS_QUEUE and POISON_QUEUE (the host's "<queue>-poison").
var eventsQueueName = 'altinn-events'
var poisonQueueName = '${eventsQueueName}-poison'
// Operational state (deferred retries; not part of the archive): ARCHIVE_STATE_CONTAINER, the
// default of shared.config. The hand-off queue case systems read archived instances from,
// provisioned ahead of the code that writes it.
var stateContainerName = 'altinn-mottak-state'
var handoffQueueName = 'altinn-archived'

// ---- Resources -----------------------------------------------------------------------------------

module identity 'app/identity.bicep' = {
  name: 'identity'
  params: {
    name: '${abbrs.managedIdentityUserAssignedIdentities}${resourceToken}'
    location: location
    tags: tags
  }
}

module monitoring 'app/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    logAnalyticsName: '${abbrs.operationalInsightsWorkspaces}${resourceToken}'
    applicationInsightsName: '${abbrs.insightsComponents}${resourceToken}'
    location: location
    tags: tags
    retentionInDays: logRetentionInDays
  }
}

module storage 'app/storage.bicep' = {
  name: 'storage'
  params: {
    name: '${abbrs.storageStorageAccounts}${resourceToken}'
    location: location
    tags: tags
    skuName: storageSkuName
    deploymentContainerName: deploymentContainerName
    archiveContainerName: archiveContainerName
    eventsQueueName: eventsQueueName
    poisonQueueName: poisonQueueName
    stateContainerName: stateContainerName
    handoffQueueName: handoffQueueName
    archiveImmutabilityDays: archiveImmutabilityDays
    deleteRetentionDays: blobDeleteRetentionDays
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsId
  }
}

module keyVault 'app/keyvault.bicep' = {
  name: 'keyvault'
  params: {
    name: '${abbrs.keyVaultVaults}${resourceToken}'
    location: location
    tags: tags
    maskinportenKeyName: maskinportenKeyName
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsId
  }
}

module rbac 'app/rbac.bicep' = {
  name: 'rbac'
  params: {
    storageAccountName: storage.outputs.name
    eventsQueueName: storage.outputs.eventsQueueName
    poisonQueueName: storage.outputs.poisonQueueName
    handoffQueueName: storage.outputs.handoffQueueName
    archiveContainerName: storage.outputs.archiveContainerName
    keyVaultName: keyVault.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    appPrincipalId: identity.outputs.principalId
    operatorPrincipalId: operatorPrincipalId
    operatorPrincipalType: operatorPrincipalType
    handoffConsumerPrincipalId: handoffConsumerPrincipalId
    handoffConsumerPrincipalType: handoffConsumerPrincipalType
  }
}

// The application's settings. Empty strings mean "use the default" to shared/config.py.
// The private key is never a value here: a Key Vault reference, resolved by the platform with
// the user-assigned identity (keyVaultReferenceIdentity on the site).
var appSettings = {
  ALTINN_ENVIRONMENT: altinnEnvironment
  ALTINN_APPS: altinnApps
  ALTINN_EVENT_TYPES: altinnEventTypes
  ALTINN_PLATFORM_URL: altinnPlatformUrl
  ALTINN_APPS_URL: altinnAppsUrl
  MASKINPORTEN_URL: maskinportenUrl
  MASKINPORTEN_CLIENT_ID: maskinportenClientId
  MASKINPORTEN_PRIVATE_KEY: '@Microsoft.KeyVault(SecretUri=${keyVault.outputs.maskinportenKeyUri})'
  MASKINPORTEN_KID: maskinportenKid
  MASKINPORTEN_CERTIFICATE: maskinportenCertificate
  MASKINPORTEN_SCOPES: maskinportenScopes
  ARCHIVE_CONTAINER: storage.outputs.archiveContainerName
  ARCHIVE_PARALLEL_DOWNLOADS: string(archiveParallelDownloads)
  ARCHIVE_BLOCK_SIZE_MIB: string(archiveBlockSizeMiB)
  ARCHIVE_MIN_DOWNLOAD_RATE_KIB: string(archiveMinDownloadRateKiB)
  ARCHIVE_RETRY_SCHEDULE: archiveRetrySchedule
  ARCHIVE_RETRY_MAX_HOURS: string(archiveRetryMaxHours)
  // The operational-state container this template creates (altinn-mottak-state).
  ARCHIVE_STATE_CONTAINER: storage.outputs.stateContainerName
  CATCHUP_SCHEDULE: catchupSchedule
  CATCHUP_MAX_INSTANCES: string(catchupMaxInstances)
  CATCHUP_TIME_BUDGET_SECONDS: string(catchupTimeBudgetSeconds)
  CATCHUP_REFUSED_QUIET_HOURS: string(catchupRefusedQuietHours)
  ALTINN_SUBSTATUS_LABEL: altinnSubstatusLabel
  ALTINN_SUBSTATUS_DESCRIPTION: altinnSubstatusDescription
  // The hand-off queue this template creates (altinn-archived), read by the case systems.
  ARCHIVE_HANDOFF_QUEUE: storage.outputs.handoffQueueName
}

module api 'app/api.bicep' = {
  name: 'api'
  // Roles first: the app reads its package, storage and Key Vault with them as soon as it starts.
  dependsOn: [
    rbac
  ]
  params: {
    name: functionAppName
    planName: '${abbrs.webServerFarms}${resourceToken}'
    location: location
    tags: tags
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    deploymentContainerName: storage.outputs.deploymentContainerName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    pythonVersion: pythonVersion
    instanceMemoryMB: instanceMemoryMB
    httpPerInstanceConcurrency: httpPerInstanceConcurrency
    maximumInstanceCount: maximumInstanceCount
    zoneRedundant: zoneRedundant
    appSettings: appSettings
  }
}

module alerts 'app/alerts.bicep' = {
  name: 'alerts'
  params: {
    name: '${abbrs.insightsScheduledQueryRules}poison-${resourceToken}'
    actionGroupName: '${abbrs.insightsActionGroups}${resourceToken}'
    location: location
    tags: tags
    applicationInsightsId: monitoring.outputs.applicationInsightsId
    poisonQueueName: storage.outputs.poisonQueueName
    alertEmailAddress: alertEmailAddress
  }
}

// ---- Outputs (azd writes them to .azure/<env>/.env) ------------------------------------------------

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = resourceGroup().name
output SERVICE_API_NAME string = api.outputs.name
output AZURE_FUNCTION_APP_NAME string = api.outputs.name
@description('Altinn Events subscription endpoint, without the function key: append ?code=<key>.')
output WEBHOOK_URL string = 'https://${api.outputs.defaultHostName}/api/events'
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
@description('Name of the Key Vault secret to put the Maskinporten private key in.')
output MASKINPORTEN_KEY_NAME string = maskinportenKeyName
@description('Blob container for operational state (deferred retries), not part of the archive.')
output STATE_CONTAINER_NAME string = storage.outputs.stateContainerName
@description('Queue case systems read archived instances from (hand-off).')
output HANDOFF_QUEUE_NAME string = storage.outputs.handoffQueueName

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

@description('Python version of the Flex Consumption runtime. 3.11 is the version this repository tests in CI.')
@allowed([
  '3.10'
  '3.11'
  '3.12'
])
param pythonVersion string = '3.11'

@description('Memory per instance (MB) on the Flex Consumption plan.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Maximum instances the app scales out to: bounds cost and the parallel load on Altinn.')
@minValue(1)
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
    archiveContainerName: storage.outputs.archiveContainerName
    keyVaultName: keyVault.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    appPrincipalId: identity.outputs.principalId
    operatorPrincipalId: operatorPrincipalId
    operatorPrincipalType: operatorPrincipalType
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
  CATCHUP_SCHEDULE: catchupSchedule
  CATCHUP_MAX_INSTANCES: string(catchupMaxInstances)
  CATCHUP_TIME_BUDGET_SECONDS: string(catchupTimeBudgetSeconds)
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

// The function app on the Flex Consumption plan (FC1, Linux), Python via functionAppConfig.runtime.
// No shared secrets anywhere: storage, the deployment package, Key Vault references and
// Application Insights are all reached with the user-assigned identity.

param name string
param planName string
param location string
param tags object = {}

@description('azd finds the app to deploy service `api` (azure.yaml) by this tag value.')
param serviceName string = 'api'

@description('Resource id of the user-assigned identity.')
param identityId string

@description('Client id of the user-assigned identity.')
param identityClientId string

param storageAccountName string
param deploymentContainerName string
param applicationInsightsName string

@description('Python version of the Flex Consumption runtime.')
param pythonVersion string

@description('Memory per instance (MB).')
param instanceMemoryMB int

@description('Upper bound on instances (cost and pressure on Altinn).')
param maximumInstanceCount int

@description('Spread instances over availability zones (at least two always-ready instances, billed).')
param zoneRedundant bool = false

@description('The application\'s own settings (ALTINN_*, MASKINPORTEN_*, ARCHIVE_*, ...), built in main.bicep.')
param appSettings object

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

// Platform settings: identity-based host storage and Entra-authenticated telemetry.
// Not set on purpose: FUNCTIONS_WORKER_RUNTIME, FUNCTIONS_EXTENSION_VERSION and
// WEBSITE_RUN_FROM_PACKAGE (Flex Consumption takes these from functionAppConfig and rejects
// them), and AzureWebJobsStorage itself (a connection string would need an account key).
var platformSettings = {
  // AzureWebJobsStorage__*: the host, the queue trigger and the app code (shared/config.py)
  // use these service URIs with the user-assigned identity.
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  AzureWebJobsStorage__blobServiceUri: storage.properties.primaryEndpoints.blob
  AzureWebJobsStorage__queueServiceUri: storage.properties.primaryEndpoints.queue
  // DefaultAzureCredential (azure-identity) picks the user-assigned identity from this.
  AZURE_CLIENT_ID: identityClientId
  // The connection string names the ingestion endpoint and instrumentation key (identifiers, not
  // credentials): with local auth disabled, ingestion also needs the identity's Entra token.
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsights.properties.ConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'Authorization=AAD;ClientId=${identityClientId}'
  // Python worker logs and traces through OpenTelemetry to Application Insights.
  PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: 'true'
}

// Platform settings win over a same-named application setting.
var allSettings = union(appSettings, platformSettings)

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // #checkov:skip=CKV_AZURE_225: Zone redundancy is a parameter (zoneRedundant, default false): on Flex Consumption it keeps at least two always-ready instances billed around the clock. Without it no event is lost in a zone outage: Altinn Events retries failed deliveries and the catch-up timer re-queues missed instances; queued events live in zone-redundant storage (GZRS by default).
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
    zoneRedundant: zoneRedundant
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  // #checkov:skip=CKV_AZURE_222: The HTTP trigger is the webhook Altinn Events calls from the internet, so the site must be publicly reachable. It is HTTPS-only with TLS 1.2, each call needs the function key, events are validated and allow-listed, and basic-auth publishing is disabled.
  // #checkov:skip=CKV_AZURE_17: Altinn Events does not present client certificates to webhook endpoints, so requiring them would block every delivery; callers authenticate with the function key.
  // #checkov:skip=CKV_AZURE_212: Flex Consumption manages instances itself (scale from zero, no instance minimum on the site); a cold start only delays delivery, Altinn Events retries and the catch-up timer recovers missed events. Always-ready instances come with zoneRedundant.
  // #checkov:skip=CKV_AZURE_213: The App Service health check (healthCheckPath) is not available on the Flex Consumption plan; the platform replaces unhealthy instances, and failures surface in Application Insights and the poison-queue alert.
  name: name
  location: location
  tags: union(tags, {
    'azd-service-name': serviceName
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientAffinityEnabled: false
    // Key Vault references in app settings are resolved with the user-assigned identity.
    keyVaultReferenceIdentity: identityId
    publicNetworkAccess: 'Enabled'
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
      }
      runtime: {
        name: 'python'
        version: pythonVersion
      }
    }
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: [for setting in items(allSettings): {
        name: setting.key
        value: setting.value
      }]
    }
  }
}

// Deployments authenticate with Microsoft Entra ID (azd, Core Tools, GitHub OIDC);
// basic-auth publishing credentials are switched off.
resource ftpCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'scm'
  properties: {
    allow: false
  }
}

output name string = functionApp.name
output id string = functionApp.id
output defaultHostName string = functionApp.properties.defaultHostName

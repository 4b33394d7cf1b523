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

@description('Concurrent webhook requests one instance takes before Flex Consumption adds an instance (functionAppConfig.scaleAndConcurrency.triggers.http.perInstanceConcurrency).')
@minValue(1)
@maxValue(1000)
param httpPerInstanceConcurrency int

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

// siteConfig on Flex Consumption holds only what the plan accepts. Flex refuses a list of App
// Service site properties outright, with ARM error 51021: "The following site configuration
// properties (Site.SiteConfig.FtpsState, Site.SiteConfig.Use32BitWorkerProcess,
// Site.SiteConfig.NetFrameworkVersion, Site.SiteConfig.FunctionsRuntimeScaleMonitoringEnabled) for
// Flex Consumption sites is invalid" (microsoft/azure-pipelines-tasks#21032; LinuxFxVersion in
// Azure/terraform-azurerm-avm-res-web-site#283), and takes runtime, scale and memory from
// functionAppConfig instead. Sources for what remains:
// - Microsoft's Flex samples set nothing but app settings and `alwaysOn: false`
//   (Azure-Samples/functions-quickstart-python-http-azd infra/app/api.bicep,
//   Azure-Samples/azure-functions-flex-consumption-samples IaC/bicep/main.bicep). That false only
//   overrides the siteConfig default of the AVM module they use (Azure/bicep-registry-modules
//   avm/res/web/site/main.bicep: alwaysOn: true, minTlsVersion: '1.2', ftpsState: 'FtpsOnly'; the
//   module has no Flex switch of its own). Without that module there is no default to override,
//   so alwaysOn is not set (always-ready instances are Flex's way to stay warm).
// - The Terraform AVM module drops exactly the refused ones on Flex (its commit ea8e0e4, "omit
//   siteConfig properties Flex Consumption rejects": alwaysOn, ftpsState, use32BitWorkerProcess,
//   preWarmedInstanceCount, functionAppScaleLimit, functionsRuntimeScaleMonitoringEnabled and the
//   language *Version fields) and keeps minTlsVersion, scmMinTlsVersion and http20Enabled.
// - The azurerm provider's Flex resource (hashicorp/terraform-provider-azurerm,
//   function_app_flex_consumption) offers no ftps_state, always_on or use_32_bit_worker, but does
//   offer minimum_tls_version, scm_minimum_tls_version and http2_enabled.
// ftpsState in particular is gone: Flex has no FTP endpoint, so checkov's FTP rule is skipped on
// siteConfig with that reason.
//
// HTTP concurrency (functionAppConfig.scaleAndConcurrency.triggers.http.perInstanceConcurrency):
// Flex Consumption scales the HTTP group (here only the webhook `receive`; the queue trigger
// `archive` scales on instances of its own) by this number, one more instance for every
// perInstanceConcurrency requests in flight. Unset, it depends on the instance size and is 1 for
// Python apps (https://learn.microsoft.com/azure/azure-functions/functions-concurrency#http-trigger-concurrency):
// a burst of Altinn deliveries on a filing deadline would cold-start one billed instance per
// request, each seconds slow, up to maximumInstanceCount. The webhook is I/O bound: validate a small
// JSON body, one queue write (about 1 ms of CPU, the rest waiting on storage), answer. Dozens share
// one instance easily; the Python worker runs them in its thread pool, and a request beyond its
// threads waits milliseconds for one, far inside Altinn's answer deadline. Allowed: 1 to 1000
// (Microsoft's Az.Functions module, Azure/azure-powershell
// src/Functions/Functions.Autorest/custom/New-AzFunctionApp.ps1: HttpPerInstanceConcurrency
// ValidateRange(1, 1000)).
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
        // The webhook's concurrency per instance: see "HTTP concurrency" above this resource.
        triggers: {
          http: {
            perInstanceConcurrency: httpPerInstanceConcurrency
          }
        }
      }
      runtime: {
        name: 'python'
        version: pythonVersion
      }
    }
    siteConfig: {
      // #checkov:skip=CKV_AZURE_78: ftpsState is refused on Flex Consumption sites (ARM error 51021: "site configuration properties (Site.SiteConfig.FtpsState, ...) for Flex Consumption sites is invalid"); Flex has no FTP endpoint to disable, deployments go through the blob package with Entra ID, and basic-auth (scm) publishing is off.
      // TLS 1.2+ for the webhook and every call to the app's host name. Accepted on Flex (kept by
      // the Terraform AVM module and the azurerm Flex resource: minimum_tls_version).
      minTlsVersion: '1.2'
      // The same for the SCM endpoint that deployments use on Flex (Core Tools, azd). Accepted on
      // Flex (azurerm Flex resource: scm_minimum_tls_version).
      scmMinTlsVersion: '1.2'
      // HTTP/2 on the front end (Altinn may use 1.1 or 2). Accepted on Flex (azurerm Flex
      // resource: http2_enabled).
      http20Enabled: true
      // The app settings: on Flex they stay in siteConfig, everything else is functionAppConfig.
      appSettings: [for setting in items(allSettings): {
        name: setting.key
        value: setting.value
      }]
    }
  }
}

// Deployments authenticate with Microsoft Entra ID (azd, Core Tools, GitHub OIDC): basic-auth
// publishing to the SCM endpoint (the one Flex deploys through) is switched off. Only `scm`: Flex
// Consumption has no FTP endpoint (its ftpsState is refused, see siteConfig), and the azurerm
// provider's Flex resource manages only this policy (hashicorp/terraform-provider-azurerm
// internal/services/appservice/function_app_flex_consumption_resource.go calls UpdateScmAllowed
// and has no FTP basic-auth setting, unlike its linux_function_app; Microsoft's Flex samples set
// neither policy).
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

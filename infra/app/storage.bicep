// Storage account for the function app: the Functions host (AzureWebJobsStorage: keys, leases),
// the Flex Consumption deployment package, the event queues and the archive itself.
// Data-plane access is Microsoft Entra ID only: shared keys (and so SAS and connection strings
// with keys) are disabled; the function app reaches it with its user-assigned identity.

@description('Storage account name: 3-24 lowercase letters and digits, globally unique.')
@minLength(3)
@maxLength(24)
param name string

param location string
param tags object = {}

@description('Replication. GZRS: three zones in the region plus a copy in the paired region, for an archive of records. ZRS or LRS only where policy or the region rules geo-replication out.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
  'Standard_RAGRS'
  'Standard_RAGZRS'
])
param skuName string = 'Standard_GZRS'

@description('Blob container for the Flex Consumption deployment package.')
param deploymentContainerName string

@description('Blob container for archived instances (ARCHIVE_CONTAINER).')
param archiveContainerName string

@description('Queue the HTTP function writes events to (shared.config.EVENTS_QUEUE).')
param eventsQueueName string

@description('Queue the Functions host moves a message to after maxDequeueCount failures (shared.config.POISON_QUEUE).')
param poisonQueueName string

@description('Blob container for the app\'s operational state (deferred retries). Not part of the archive: no immutability.')
param stateContainerName string

@description('Queue the app hands archived instances to case systems on.')
param handoffQueueName string

@description('Days every blob version in the archive container stays immutable (version-level WORM, unlocked time-based retention). 0 = off.')
@minValue(0)
@maxValue(146000)
param archiveImmutabilityDays int = 0

@description('Days a deleted or overwritten blob (and a deleted container) can be restored.')
@minValue(1)
@maxValue(365)
param deleteRetentionDays int = 30

@description('Log Analytics workspace that receives the storage audit logs.')
param logAnalyticsWorkspaceId string

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // #checkov:skip=CKV_AZURE_35: Flex Consumption without virtual network integration reaches host storage, the deployment package and the queues over the public endpoint and has no fixed outbound IPs to allow; shared keys are disabled, so every request needs an Entra token and an RBAC role. Private endpoints + VNet integration are the next hardening step.
  // #checkov:skip=CKV_AZURE_59: Same reason as CKV_AZURE_35: the public endpoint stays reachable for the function app; anonymous blob access and shared-key/SAS access are disabled, so it serves only Entra-authenticated, RBAC-authorized requests.
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    accessTier: 'Hot'
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowCrossTenantReplication: false
    isLocalUserEnabled: false
    isSftpEnabled: false
    isHnsEnabled: false
    dnsEndpointType: 'Standard'
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: {
          enabled: true
          keyType: 'Account'
        }
        file: {
          enabled: true
          keyType: 'Account'
        }
        queue: {
          enabled: true
          keyType: 'Account'
        }
        table: {
          enabled: true
          keyType: 'Account'
        }
      }
    }
    // The Flex Consumption app reaches storage over the public endpoint unless it is integrated
    // into a virtual network with private endpoints (not part of this template). Access is still
    // authenticated and authorized: Entra ID only (shared keys off), RBAC on the identity.
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    // Every overwrite keeps the previous version; deleted blobs and containers stay restorable.
    isVersioningEnabled: true
    deleteRetentionPolicy: {
      enabled: true
      days: deleteRetentionDays
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: deleteRetentionDays
    }
  }
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

// Archive immutability (archiveImmutabilityDays > 0): version-level WORM on the archive
// container with a default time-based retention policy, so every blob version written there
// (data, instance.json, manifest.json) can be neither deleted nor changed for that many days, by
// anyone, the function's own identity (Storage Blob Data Owner) included.
// - Needs blob versioning on the account (isVersioningEnabled above; version-level policies
//   require it: https://learn.microsoft.com/azure/storage/blobs/immutable-version-level-worm-policies).
// - immutableStorageWithVersioning can only be switched on when the container is created; an
//   existing container must be migrated first (https://learn.microsoft.com/azure/templates/microsoft.storage/storageaccounts/blobservices/containers,
//   property immutableStorageWithVersioning; docs/deploy.md has the steps). It can never be
//   switched off again.
// - The policy child must be named 'default'; the same shape as the AVM module
//   (Azure/bicep-registry-modules avm/res/storage/storage-account/blob-service/container/main.bicep
//   and its immutability-policy/main.bicep, whose tests/e2e/immutability test deploys it twice to
//   prove a redeployment is accepted; https://learn.microsoft.com/azure/templates/microsoft.storage/storageaccounts/blobservices/containers/immutabilitypolicies).
// OPERATORS: the policy is created UNLOCKED. An unlocked policy can still be shortened, extended
// or deleted (by whoever may write this resource), so it protects against mistakes and a
// compromised app identity, not against an administrator. A LOCKED policy can only be extended,
// never shortened or deleted, and the storage account cannot be deleted while it protects a blob.
// Lock it deliberately, outside this template, once the period is certain:
// `az storage container immutability-policy lock` (https://learn.microsoft.com/azure/storage/blobs/immutable-policy-configure-version-scope).
// NOT YET with today's code: a protected blob version refuses Set Blob Metadata, and the app marks
// manifest.json confirmed by setting its metadata (shared/archive.py mark_confirmed). Keep 0 until
// the confirmation is recorded elsewhere (docs/deploy.md, "Archive immutability").
resource archiveContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: archiveContainerName
  properties: {
    publicAccess: 'None'
    // Version-level immutability support (only at creation, irreversible); null leaves it as is.
    immutableStorageWithVersioning: (archiveImmutabilityDays > 0) ? {
      enabled: true
    } : null
  }
}

// The default version-level retention policy of the archive container (unlocked, see above).
resource archiveImmutabilityPolicy 'Microsoft.Storage/storageAccounts/blobServices/containers/immutabilityPolicies@2023-05-01' = if (archiveImmutabilityDays > 0) {
  parent: archiveContainer
  name: 'default'
  properties: {
    immutabilityPeriodSinceCreationInDays: archiveImmutabilityDays
    // Block blobs only, written once: no appends to allow.
    allowProtectedAppendWrites: false
  }
}

// Operational state of the app (deferred retries): not part of the archive, so no immutability;
// versioning and soft delete of the account apply.
resource stateContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: stateContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource eventsQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queueService
  name: eventsQueueName
}

resource poisonQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queueService
  name: poisonQueueName
}

// Hand-off to case systems: one message per archived instance (written by the app, read and
// deleted by the consumer granted in rbac.bicep).
resource handoffQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queueService
  name: handoffQueueName
}

// Audit trail of data-plane access (who wrote or deleted which archive blob, queue operations).
resource blobDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'audit-to-log-analytics'
  scope: blobService
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        category: 'StorageRead'
        enabled: true
      }
      {
        category: 'StorageWrite'
        enabled: true
      }
      {
        category: 'StorageDelete'
        enabled: true
      }
    ]
  }
}

resource queueDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'audit-to-log-analytics'
  scope: queueService
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        category: 'StorageRead'
        enabled: true
      }
      {
        category: 'StorageWrite'
        enabled: true
      }
      {
        category: 'StorageDelete'
        enabled: true
      }
    ]
  }
}

output name string = storage.name
output id string = storage.id
output blobEndpoint string = storage.properties.primaryEndpoints.blob
output queueEndpoint string = storage.properties.primaryEndpoints.queue
output deploymentContainerName string = deploymentContainer.name
output archiveContainerName string = archiveContainer.name
output eventsQueueName string = eventsQueue.name
output poisonQueueName string = poisonQueue.name
output stateContainerName string = stateContainer.name
output handoffQueueName string = handoffQueue.name

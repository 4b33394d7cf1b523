// Role assignments: least privilege, each with its purpose. Built-in role definition ids:
// https://learn.microsoft.com/azure/role-based-access-control/built-in-roles

param storageAccountName string
param eventsQueueName string
param poisonQueueName string
param handoffQueueName string
param archiveContainerName string
param keyVaultName string
param applicationInsightsName string

@description('Principal id of the function app\'s user-assigned identity.')
param appPrincipalId string

@description('Optional: an operator (user or group) that runs the operations CLI and sets the Maskinporten key. Empty: no operator roles.')
param operatorPrincipalId string = ''

@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param operatorPrincipalType string = 'User'

@description('Optional: the case system that reads the hand-off queue. Empty: no grant.')
param handoffConsumerPrincipalId string = ''

@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param handoffConsumerPrincipalType string = 'ServicePrincipal'

var roles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
  // Read blobs and list containers; no write, no delete.
  // https://learn.microsoft.com/azure/role-based-access-control/built-in-roles/storage#storage-blob-data-reader
  storageBlobDataReader: '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  // Peek, get and delete messages; no add, no update, no queue management.
  // https://learn.microsoft.com/azure/role-based-access-control/built-in-roles/storage#storage-queue-data-message-processor
  storageQueueDataMessageProcessor: '8a0f0c08-91a1-4084-bc3d-661d67233fed'
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6'
  keyVaultSecretsOfficer: 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: storage
  name: 'default'
}

resource archiveContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: archiveContainerName
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' existing = {
  parent: storage
  name: 'default'
}

resource eventsQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' existing = {
  parent: queueService
  name: eventsQueueName
}

resource poisonQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' existing = {
  parent: queueService
  name: poisonQueueName
}

resource handoffQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' existing = {
  parent: queueService
  name: handoffQueueName
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

// ---- The function app's identity ---------------------------------------------------------------

// Storage Blob Data Owner on the storage account. Purpose: (1) AzureWebJobsStorage: the Functions
// host creates and uses its own containers (azure-webjobs-hosts for leases and timer schedules,
// azure-webjobs-secrets for function keys) and Microsoft documents Blob Data Owner as the role
// for an identity-based host storage connection; (2) Flex Consumption reads the deployment
// package from its container with this identity; (3) the archive function writes the
// altinn-data blobs, and (4) the operational state in altinn-mottak-state. Account scope is
// needed because the host creates containers at run time.
// The account holds nothing but this app's data. What Owner adds over Contributor (ACLs on
// hierarchical namespaces, which are off here, and permanent deletion of blob versions) is
// bounded by blob soft delete, and for altinn-data by its immutability (archiveImmutabilityDays).
resource appBlobDataOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, appPrincipalId, roles.storageBlobDataOwner)
  scope: storage
  properties: {
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
    description: 'Functions host storage (AzureWebJobsStorage), Flex deployment package, archive writes'
  }
}

// Storage Queue Data Contributor on the events queue only. Purpose: the HTTP function enqueues
// events (add); the queue trigger reads, hides (update visibility on retry) and deletes them,
// and reads the queue length for scaling. Message Sender/Processor are not enough: the host
// updates messages on retry, which only Contributor allows.
resource appEventsQueueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(eventsQueue.id, appPrincipalId, roles.storageQueueDataContributor)
  scope: eventsQueue
  properties: {
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
    description: 'Enqueue Altinn events (HTTP, catch-up) and consume them (queue trigger)'
  }
}

// Storage Queue Data Contributor on the poison queue only. Purpose: after maxDequeueCount the
// host moves the message here (create-if-not-exists + add); operators replay from it.
resource appPoisonQueueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(poisonQueue.id, appPrincipalId, roles.storageQueueDataContributor)
  scope: poisonQueue
  properties: {
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
    description: 'Functions host moves failed messages to the poison queue'
  }
}

// Storage Queue Data Contributor on the hand-off queue only. Purpose: the app sends one message per
// archived instance to the case systems (add), like on the other queues it writes (Message
// Sender would do for adding alone; Contributor keeps the app's queue roles uniform and lets it
// create the queue if it is missing, as pipeline.enqueue does).
resource appHandoffQueueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(handoffQueue.id, appPrincipalId, roles.storageQueueDataContributor)
  scope: handoffQueue
  properties: {
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
    description: 'Hand archived instances to case systems (send to the hand-off queue)'
  }
}

// Key Vault Secrets User on the vault. Purpose: resolve the MASKINPORTEN_PRIVATE_KEY Key Vault
// reference (read secret values only: no list of keys, no writes). The vault holds only this
// app's secrets.
resource appKeyVaultSecretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, appPrincipalId, roles.keyVaultSecretsUser)
  scope: vault
  properties: {
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    description: 'Resolve the Maskinporten private key Key Vault reference'
  }
}

// Monitoring Metrics Publisher on Application Insights. Purpose: send telemetry with a Microsoft
// Entra token (APPLICATIONINSIGHTS_AUTHENTICATION_STRING), required because local auth is off.
resource appMetricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(applicationInsights.id, appPrincipalId, roles.monitoringMetricsPublisher)
  scope: applicationInsights
  properties: {
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
    description: 'Entra ID authenticated telemetry ingestion'
  }
}

// ---- Optional operator (the deploying user under azd, or a group in production) ----------------

// Key Vault Secrets Officer on the vault. Purpose: put and rotate the Maskinporten private key
// (the template never needs to see it).
resource operatorSecretsOfficer 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(operatorPrincipalId)) {
  name: guid(vault.id, operatorPrincipalId, roles.keyVaultSecretsOfficer)
  scope: vault
  properties: {
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsOfficer)
    description: 'Operator sets and rotates the Maskinporten private key'
  }
}

// Storage Blob Data Contributor on the archive container only. Purpose: the operations CLI
// (archive one instance, catch up now) and checking archived instances.
resource operatorArchiveContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(operatorPrincipalId)) {
  name: guid(archiveContainer.id, operatorPrincipalId, roles.storageBlobDataContributor)
  scope: archiveContainer
  properties: {
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    description: 'Operator archives single instances and inspects the archive'
  }
}

// Storage Queue Data Contributor on the two queues only. Purpose: the operations CLI replays
// poison messages (read + delete from the poison queue, add to the events queue).
resource operatorEventsQueueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(operatorPrincipalId)) {
  name: guid(eventsQueue.id, operatorPrincipalId, roles.storageQueueDataContributor)
  scope: eventsQueue
  properties: {
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
    description: 'Operator replays poison messages and queues catch-up work'
  }
}

// Storage Queue Data Contributor on the poison queue only. Purpose: see the events queue above
// (replay reads and deletes here).
resource operatorPoisonQueueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(operatorPrincipalId)) {
  name: guid(poisonQueue.id, operatorPrincipalId, roles.storageQueueDataContributor)
  scope: poisonQueue
  properties: {
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
    description: 'Operator inspects and replays poison messages'
  }
}

// ---- Optional hand-off consumer (a case system) -------------------------------------------------

// Storage Queue Data Message Processor on the hand-off queue only. Purpose: the case system reads
// the messages the app hands off and deletes each once it has taken the instance over; it cannot
// add or change messages and sees no other queue.
resource handoffConsumerMessageProcessor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(handoffConsumerPrincipalId)) {
  name: guid(handoffQueue.id, handoffConsumerPrincipalId, roles.storageQueueDataMessageProcessor)
  scope: handoffQueue
  properties: {
    principalId: handoffConsumerPrincipalId
    principalType: handoffConsumerPrincipalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataMessageProcessor)
    description: 'Case system reads and deletes hand-off messages (altinn-archived)'
  }
}

// Storage Blob Data Reader on the archive container only. Purpose: the case system verifies the
// manifest and every element the message names (docs/handoff.md) and takes the files; it cannot
// write or delete anything in the archive, and sees no other container.
resource handoffConsumerArchiveReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(handoffConsumerPrincipalId)) {
  name: guid(archiveContainer.id, handoffConsumerPrincipalId, roles.storageBlobDataReader)
  scope: archiveContainer
  properties: {
    principalId: handoffConsumerPrincipalId
    principalType: handoffConsumerPrincipalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataReader)
    description: 'Case system reads the archived instances it is handed (altinn-data)'
  }
}

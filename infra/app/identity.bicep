// User-assigned managed identity of the function app. It is the only principal the app uses:
// for host storage, the deployment package, the queues, the archive, Key Vault references and
// Application Insights ingestion. Roles are granted in rbac.bicep.

param name string
param location string
param tags object = {}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId

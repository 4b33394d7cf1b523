// Key Vault for the Maskinporten private key. Authorization is Azure RBAC only (no access
// policies); soft delete and purge protection keep a deleted key recoverable for the retention
// period. The function app reads the secret through a Key Vault reference in its app settings,
// resolved with its user-assigned identity (Key Vault Secrets User, see rbac.bicep).
// The template creates no secret: the key never passes through a deployment. An operator puts it
// in with `az keyvault secret set` (docs/deploy.md; the azd postprovision hook can do it).

@description('Key Vault name: 3-24 letters, digits and hyphens, globally unique.')
@minLength(3)
@maxLength(24)
param name string

param location string
param tags object = {}

@description('Days a deleted vault or secret can be recovered (7-90). Cannot be changed after creation.')
@minValue(7)
@maxValue(90)
param softDeleteRetentionInDays int = 90

@description('Name of the secret that holds the Maskinporten private key (PEM or JWK); set by the operator.')
param maskinportenKeyName string

@description('Log Analytics workspace that receives the Key Vault audit log.')
param logAnalyticsWorkspaceId string

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // #checkov:skip=CKV_AZURE_109: The function app (Flex Consumption, no VNet integration) resolves its Key Vault reference over the public endpoint and App Service is not a Key Vault trusted service for references, so a deny-by-default firewall would break it. Access needs an Entra token and an RBAC role (no access policies); reads are audited to Log Analytics.
  // #checkov:skip=CKV_AZURE_189: Same reason as CKV_AZURE_109: public network access is required for Key Vault references without VNet integration and for operators setting the key; authorization is RBAC-only and audited.
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: softDeleteRetentionInDays
    enablePurgeProtection: true
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    // Key Vault references of a function app without virtual network integration are resolved
    // over the public endpoint; access still requires an Entra token and an RBAC role.
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

// Audit log: every secret read, by whom.
resource vaultDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'audit-to-log-analytics'
  scope: vault
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        categoryGroup: 'audit'
        enabled: true
      }
    ]
  }
}

output id string = vault.id
output name string = vault.name
output uri string = vault.properties.vaultUri
// Versionless: the app picks up a new secret version (key rotation) without a redeploy.
output maskinportenKeyUri string = '${vault.properties.vaultUri}secrets/${maskinportenKeyName}/'

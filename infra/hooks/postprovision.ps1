# azd postprovision hook (Windows): see postprovision.sh. Puts the Maskinporten private key into
# Key Vault when MASKINPORTEN_PRIVATE_KEY_FILE is set; the key never passes through the deployment.
$ErrorActionPreference = 'Stop'

$vault = $env:AZURE_KEY_VAULT_NAME
if (-not $vault) { throw 'AZURE_KEY_VAULT_NAME missing: run through azd' }
$name = if ($env:MASKINPORTEN_KEY_NAME) { $env:MASKINPORTEN_KEY_NAME } else { 'maskinporten-private-key' }
$file = $env:MASKINPORTEN_PRIVATE_KEY_FILE

if (-not $file) {
    Write-Host 'Maskinporten key: not set by this hook. Put it into Key Vault once (needs Key Vault Secrets Officer):'
    Write-Host "  az keyvault secret set --vault-name $vault --name $name --file ./maskinporten.pem --content-type application/x-pem-file --output none"
}
elseif (-not (Get-Command az -ErrorAction SilentlyContinue)) {
    throw 'MASKINPORTEN_PRIVATE_KEY_FILE is set but the Azure CLI (az) is not installed'
}
elseif (-not (Test-Path -PathType Leaf $file)) {
    throw "MASKINPORTEN_PRIVATE_KEY_FILE=$file is not a readable file"
}
else {
    # A role assignment made by this provision can take a few minutes to apply: retry.
    for ($attempt = 1; ; $attempt++) {
        az keyvault secret set --vault-name $vault --name $name --file $file --encoding utf-8 --content-type application/x-pem-file --output none
        if ($LASTEXITCODE -eq 0) { break }
        if ($attempt -ge 10) { throw "could not set secret $name in $vault (do you hold Key Vault Secrets Officer on it?)" }
        Write-Host 'retrying in 30 s (role assignments propagate) ...'
        Start-Sleep -Seconds 30
    }
    Write-Host "Maskinporten key stored in Key Vault $vault as secret $name."
}

Write-Host "Webhook URL (add ?code=<function key>): $env:WEBHOOK_URL"

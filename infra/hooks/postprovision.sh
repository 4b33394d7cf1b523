#!/bin/sh
# azd postprovision hook: put the Maskinporten private key into Key Vault, if given a file.
#   azd env set MASKINPORTEN_PRIVATE_KEY_FILE ./maskinporten.pem   (PEM or JWK)
# The key goes from your disk to Key Vault with your own Entra login (az CLI); it never passes
# through the deployment. azd exports the Bicep outputs (AZURE_KEY_VAULT_NAME, ...) to this hook.
set -eu

vault="${AZURE_KEY_VAULT_NAME:?AZURE_KEY_VAULT_NAME missing: run through azd}"
name="${MASKINPORTEN_KEY_NAME:-maskinporten-private-key}"
file="${MASKINPORTEN_PRIVATE_KEY_FILE:-}"

if [ -z "$file" ]; then
    echo "Maskinporten key: not set by this hook. Put it into Key Vault once (needs Key Vault Secrets Officer):"
    echo "  az keyvault secret set --vault-name $vault --name $name --file ./maskinporten.pem --content-type application/x-pem-file --output none"
elif ! command -v az >/dev/null 2>&1; then
    echo "MASKINPORTEN_PRIVATE_KEY_FILE is set but the Azure CLI (az) is not installed" >&2
    exit 1
elif [ ! -r "$file" ]; then
    echo "MASKINPORTEN_PRIVATE_KEY_FILE=$file is not a readable file" >&2
    exit 1
else
    # A role assignment made by this provision can take a few minutes to apply: retry.
    attempt=1
    until az keyvault secret set --vault-name "$vault" --name "$name" --file "$file" \
        --encoding utf-8 --content-type application/x-pem-file --output none; do
        if [ "$attempt" -ge 10 ]; then
            echo "could not set secret $name in $vault (do you hold Key Vault Secrets Officer on it?)" >&2
            exit 1
        fi
        echo "retrying in 30 s (role assignments propagate) ..."
        attempt=$((attempt + 1))
        sleep 30
    done
    echo "Maskinporten key stored in Key Vault $vault as secret $name."
fi

echo "Webhook URL (add ?code=<function key>): ${WEBHOOK_URL:-}"

#!/usr/bin/env bash
# Regenerates reference-schema.json from webapp-types.ts (the coordinator webapp's types, quoted)
# with ts-json-schema-generator (the TypeScript compiler's view of the types). Needs node and npm;
# the tools are installed into a temporary directory, pinned.
#   bash tests/api/reference/generate-schema.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
tools="$(mktemp -d)"
trap 'rm -rf "$tools"' EXIT
(cd "$tools" && npm init -y >/dev/null && npm install --silent --no-audit --no-fund \
    ts-json-schema-generator@2.10.0 typescript@5.9.3)
cp "$here/webapp-types.ts" "$tools/webapp-types.ts"
printf '{"compilerOptions": {"strict": true, "target": "es2020", "module": "commonjs", "noEmit": true}}\n' \
    > "$tools/tsconfig.json"
# Objects may carry more properties than a type names: TypeScript's structural typing accepts them
# from JSON (a typed fetch), so additional properties are allowed; every named property is checked.
"$tools/node_modules/.bin/tsc" -p "$tools/tsconfig.json"
"$tools/node_modules/.bin/ts-json-schema-generator" --path "$tools/webapp-types.ts" --tsconfig "$tools/tsconfig.json" \
    --type '*' --additional-properties --out "$here/reference-schema.json"
echo "wrote $here/reference-schema.json"

#!/usr/bin/env bash
# Rebuild dreamfusion/report/vendor/ from the pinned npm package (package-lock.json):
#
#   tools/report-viewer/vendor.sh
#
# Copies @google/model-viewer's UMD bundle (three.js and lit inside; a classic script, so it can be
# inlined into report.html and run from file://) and the licenses of everything in that bundle, and
# records name, version, license and sha256 in vendor/VENDORED.json. Commit the result: it is what ships.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dest="$here/../../dreamfusion/report/vendor"
npm ci --silent --no-audit --no-fund --prefix "$here"
nm="$here/node_modules"
src="$nm/@google/model-viewer/dist/model-viewer-umd.min.js"
if grep -qi '</script\|<script' "$src"; then   # it is inlined in a <script> element
  echo "vendor.sh: $src contains a <script> tag; it cannot be inlined as is" >&2
  exit 1
fi
mkdir -p "$dest"
cp "$src" "$dest/model-viewer.min.js"
: > "$dest/LICENSES.txt"
entries=()
for pkg in @google/model-viewer three lit lit-html lit-element @lit/reactive-element @monogrid/gainmap-js; do
  read -r version license < <(node -e 'const p=require(process.argv[1]); console.log(p.version, p.license)' \
                                "$nm/$pkg/package.json")
  printf '==== %s %s (%s) ====\n\n' "$pkg" "$version" "$license" >> "$dest/LICENSES.txt"
  cat "$nm/$pkg/LICENSE" >> "$dest/LICENSES.txt"
  printf '\n' >> "$dest/LICENSES.txt"
  entries+=("{\"name\": \"$pkg\", \"version\": \"$version\", \"license\": \"$license\"}")
done
sha=$(sha256sum "$dest/model-viewer.min.js" | cut -d' ' -f1)
{
  printf '{\n  "file": "model-viewer.min.js",\n  "from": "@google/model-viewer/dist/model-viewer-umd.min.js",\n'
  printf '  "sha256": "%s",\n  "bundles": [\n' "$sha"
  for i in "${!entries[@]}"; do
    sep=","; [ "$i" -eq $((${#entries[@]} - 1)) ] && sep=""
    printf '    %s%s\n' "${entries[$i]}" "$sep"
  done
  printf '  ]\n}\n'
} > "$dest/VENDORED.json"
echo "vendored model-viewer.min.js ($(wc -c < "$dest/model-viewer.min.js") bytes, sha256 $sha) into $dest"

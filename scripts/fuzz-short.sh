#!/usr/bin/env bash
# fuzz-short.sh: run every Go fuzz target in the module for FUZZTIME each
# (default 10s). Targets are discovered with "go test -list", so new ones
# are picked up without editing this script.
#
#   FUZZTIME=2m scripts/fuzz-short.sh [PACKAGES...]   (default ./...)
#
# A failure stops the run; "go test" then saves the failing input under the
# package's testdata/fuzz/<Target>/ to be committed as a regression seed.
set -euo pipefail

fuzztime=${FUZZTIME:-10s}
cd "$(dirname "$0")/.."
(($# > 0)) || set -- ./...

# "go test -list" prints a package's matching names, then "ok <pkg> ...".
# Listing does not run tests, so it is quick.
list=$(go test -list '^Fuzz' "$@")

targets=()
pending=()
while IFS= read -r line; do
	case $line in
	Fuzz*) pending+=("$line") ;;
	ok*)
		pkg=$(awk '{print $2}' <<<"$line")
		for name in "${pending[@]}"; do
			targets+=("$pkg $name")
		done
		pending=()
		;;
	esac
done <<<"$list"

if ((${#targets[@]} == 0)); then
	echo "fuzz-short: no fuzz targets found"
	exit 0
fi

echo "fuzz-short: ${#targets[@]} target(s), $fuzztime each"
for t in "${targets[@]}"; do
	pkg=${t% *}
	name=${t#* }
	echo "fuzz-short: $pkg $name"
	go test "$pkg" -run='^$' -fuzz="^${name}\$" -fuzztime="$fuzztime"
done

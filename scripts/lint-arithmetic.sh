#!/usr/bin/env bash
# lint-arithmetic.sh: the arithmetic rule of SECURITY.md, checked mechanically.
#
# In the modules that handle a peer's values (messages, rings, inflight areas, packets), every
# conversion to a narrower integer type — UInt8/16/32, Int8/16/32 — either says how it behaves
# when the value does not fit (`truncatingIfNeeded:`, `clamping:`, `exactly:`, `bitPattern:`) or
# carries a `// bounded: WHY` comment on its line or the line above naming the check that makes it
# fit. A plain `UInt16(x)` traps when x does not fit: one that nobody has argued for fails here.
# Literals (`UInt16(0)`) and ternaries of literals (`UInt8(flag ? 1 : 0)`) always fit.
# `+`, `-`, `*` on such values are kept by review (SECURITY.md's checklist) and the fuzzers.
set -euo pipefail
cd "$(dirname "$0")/.."
modules=(VhostProtocol Virtqueue VhostBackend VhostDevices VhostFrontend VhostTransport)
conv='\b(UInt8|UInt16|UInt32|Int8|Int16|Int32)\((?!truncatingIfNeeded:|clamping:|exactly:|bitPattern:|repeating:|\))'
literal='\b(UInt8|UInt16|UInt32|Int8|Int16|Int32)\(\s*((0x)?[0-9a-fA-F_]+|[^?]*\?\s*(0x)?[0-9a-fA-F_]+\s*:\s*(0x)?[0-9a-fA-F_]+)\s*\)'
status=0
for m in "${modules[@]}"; do
  while IFS= read -r file; do
    prev=""
    n=0
    while IFS= read -r line; do
      n=$((n + 1))
      code=${line%%//*}
      if printf '%s' "$code" | grep -qP "$conv"; then
        rest=$(printf '%s' "$code" | grep -oP "$conv" | wc -l)
        lits=$(printf '%s' "$code" | grep -oP "$literal" | wc -l || true)
        if [ "$rest" -gt "$lits" ] && ! printf '%s\n%s' "$prev" "$line" | grep -q '// bounded:'; then
          echo "$file:$n: narrowing conversion without truncatingIfNeeded/clamping/exactly or a '// bounded:' reason"
          echo "    $line"
          status=1
        fi
      fi
      prev=$line
    done <"$file"
  done < <(find "Sources/$m" -name '*.swift' | sort)
done
[ $status = 0 ] && echo "lint-arithmetic: every narrowing conversion in ${modules[*]} is bounded or explicit"
exit $status

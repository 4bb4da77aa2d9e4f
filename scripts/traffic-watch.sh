#!/usr/bin/env bash
# Runs a command while recording every packet this machine sends to an address that is neither loopback
# nor on a test link (the namespaces of test/helpers/netns.ts use 10.200.0.0-10.249.255.255), then lists
# them. Tests, benches and fuzzers must send nothing there (README, "Traffic stays home").
#   scripts/traffic-watch.sh [--strict] -- COMMAND...
# --strict: exit 3 when any such packet was seen (else the command's own exit code).
# Not counted: multicast and broadcast, IPv6 neighbour discovery, DHCP (the machine's own housekeeping).
set -euo pipefail
strict=0
while [ "$#" -gt 0 ]; do
  case "$1" in
    --strict) strict=1; shift ;;
    --) shift; break ;;
    *) echo "traffic-watch: unknown option $1" >&2; exit 2 ;;
  esac
done
command -v tcpdump >/dev/null || { echo "traffic-watch: tcpdump is not installed (scripts/setup.sh --test installs it)" >&2; exit 2; }
filter='((ip and not dst net 127.0.0.0/8 and not dst net 10.200.0.0/13 and not dst net 10.208.0.0/12
  and not dst net 10.224.0.0/12 and not dst net 10.240.0.0/13 and not dst net 10.248.0.0/15
  and not ip multicast and not ip broadcast and not dst host 255.255.255.255)
  or (ip6 and not dst host ::1 and not ip6 multicast and not dst net fe80::/10))
  and not (udp port 67 or udp port 68)'
pcap="$(mktemp /tmp/wl-traffic-XXXXXX.pcap)"
tcpdump -i any -n -U -Q out -w "$pcap" "$filter" 2>/dev/null &
dump=$!
# tcpdump needs a moment to open the capture before the command may send anything.
for _ in $(seq 50); do [ -s "$pcap" ] && break; sleep 0.1; done
set +e
"$@"
rc=$?
# The report reads the capture through pipes cut short by head: no errexit or pipefail from here on.
set +o pipefail
sleep 1
kill "$dump" 2>/dev/null; wait "$dump" 2>/dev/null
n=$(tcpdump -n -r "$pcap" 2>/dev/null | wc -l)
if [ "$n" -gt 0 ]; then
  echo "traffic-watch: $n packet(s) left for addresses outside 127.0.0.0/8 and the test links; the first 20:"
  tcpdump -n -r "$pcap" 2>/dev/null | head -n 20
  echo "traffic-watch: destinations:"
  tcpdump -n -r "$pcap" 2>/dev/null | awk '{for (i=1;i<=NF;i++) if ($i==">") {print $(i+1); break}}' | sed 's/[.:][^.:]*:$//' | sort | uniq -c | sort -rn | head -n 10
else
  echo "traffic-watch: no packet left for an address outside 127.0.0.0/8 and the test links"
fi
rm -f "$pcap"
if [ "$strict" = 1 ] && [ "$n" -gt 0 ]; then exit 3; fi
exit "$rc"

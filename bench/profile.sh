#!/usr/bin/env bash
# Profiles one side of R1 or R4 with a fixed amount of work, so that figures do not
# depend on what else the machine is doing (docs/benchmarks.md, "Profiles").
#
#   bench/profile.sh callgrind r1        # the ingress, N producer requests
#   bench/profile.sh callgrind r1-base   # the bare 202 server, the same requests
#   bench/profile.sh callgrind r4        # the dispatcher, N pre-filled events
#   bench/profile.sh callgrind r4-base   # the client loop, the same delivery requests
#   bench/profile.sh perf r1|r4          # sampled (cpu-clock, kernel included)
#
# callgrind: counters are zeroed after a warm-up and dumped after N events, and the
# script prints instructions per event (Ir / N) plus the file to annotate with
# `callgrind_annotate --inclusive=yes FILE`. perf: `perf record` of the server for the
# measured part; read with `perf report -i FILE --no-children --sort dso,sym`.
# Needs a release build: cargo build --release -p triggerfish-bench.
# Environment: N (events, default 20000 for callgrind, 300000 for perf), OUT (dir).
set -euo pipefail

tool=${1:?tool: callgrind or perf}
what=${2:?what: r1, r1-base, r4 or r4-base}
here=$(cd "$(dirname "$0")/.." && pwd)
B=${B:-$here/target/release/triggerfish-bench}
OUT=${OUT:-/tmp/triggerfish-profile}
mkdir -p "$OUT"
work=$(mktemp -d /tmp/tf-profile-XXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

if [ "$tool" = callgrind ]; then N=${N:-20000}; else N=${N:-300000}; fi
WARM=${WARM:-$((N / 10))}

# Starts "$@" in the background with stdout to $1.out; sets $pid and $addr.
start() {
	local name=$1
	shift
	# Empty the output first: a restarted server's file still holds the old address
	# until the background process opens it.
	: >"$work/$name.out"
	"$@" >"$work/$name.out" 2>"$work/$name.err" &
	pid=$!
	pids+=("$pid")
	for _ in $(seq 1 600); do
		addr=$(sed -En 's#^listening on https?://##p' "$work/$name.out" 2>/dev/null | head -1 || true)
		[ -n "$addr" ] && return 0
		sleep 0.1
	done
	echo "$name did not start" >&2
	cat "$work/$name.err" >&2
	exit 1
}

wrap() {
	case "$tool" in
	callgrind) echo valgrind --tool=callgrind --callgrind-out-file="$OUT/$what.callgrind.%p" ;;
	*) echo ;;
	esac
}

metric() {
	curl -s "http://$1/metrics" | awk -v m="$2" 'index($0, m) == 1 { s += $NF } END { print s + 0 }'
}

measure_begin() {
	case "$tool" in
	callgrind) callgrind_control -z "$1" >/dev/null ;;
	perf)
		perf record -F 1999 -g --call-graph dwarf,16384 -p "$1" -o "$OUT/$what.perf.data" 2>"$work/perf.err" &
		perf_pid=$!
		sleep 0.5
		;;
	esac
}

measure_end() {
	case "$tool" in
	callgrind) callgrind_control -d "$1" >/dev/null ;;
	perf)
		kill -INT "$perf_pid"
		wait "$perf_pid" || true
		;;
	esac
}

report() {
	local events=$1
	case "$tool" in
	callgrind)
		sleep 1
		local f
		f=$(ls -t "$OUT/$what".callgrind.* | head -1)
		local ir
		ir=$(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
		echo "$what: $ir Ir over $events events = $((ir / events)) Ir/event ($f)"
		;;
	perf) echo "$what: perf data in $OUT/$what.perf.data ($events events)" ;;
	esac
}

# shellcheck disable=SC2046
case "$what" in
r1 | r1-base)
	if [ "$what" = r1 ]; then
		"$B" prefill --data-dir "$work/data" --subscriber unused --triggers 0 --events 0 >/dev/null
		start server $(wrap) "$B" serve --config "$work/data.yaml" --data-dir "$work/data" --listen 127.0.0.1:0 --no-admin
	else
		start server $(wrap) "$B" null-server
	fi
	server=$pid
	"$B" load --addr "$addr" --requests "$WARM" >/dev/null
	measure_begin "$server"
	"$B" load --addr "$addr" --requests "$N"
	measure_end "$server"
	report "$N"
	;;
r4)
	start sink "$B" null-server
	sink=$addr
	"$B" prefill --data-dir "$work/data" --subscriber "http://$sink/r4" --events 0 >/dev/null
	# Once, so the trigger's checkpoint sits at the (empty) end; then pre-fill.
	start server "$B" serve --config "$work/data.yaml" --data-dir "$work/data" --listen 127.0.0.1:0 --no-admin
	kill "$pid"
	wait "$pid" 2>/dev/null || true
	"$B" prefill --data-dir "$work/data" --subscriber "http://$sink/r4" --events $((N + 2 * WARM)) >/dev/null
	start server $(wrap) "$B" serve --config "$work/data.yaml" --data-dir "$work/data" --listen 127.0.0.1:0 --no-admin
	server=$pid
	m='triggerfish_dispatcher_deliveries_total'
	until [ "$(metric "$addr" "$m")" -ge "$WARM" ]; do sleep 0.05; done
	measure_begin "$server"
	c0=$(metric "$addr" "$m")
	until [ "$(metric "$addr" "$m")" -ge $((N + WARM)) ]; do sleep 0.05; done
	measure_end "$server"
	c1=$(metric "$addr" "$m")
	# Polling /metrics went through the same process: about 3 requests per second.
	report $((c1 - c0))
	;;
r4-base)
	start sink "$B" null-server
	[ "$tool" = callgrind ] || { echo "r4-base: callgrind only" >&2; exit 1; }
	# Two runs of different length; the difference is N requests of steady state.
	for n in "$WARM" $((WARM + N)); do
		valgrind --tool=callgrind --callgrind-out-file="$OUT/$what.$n.callgrind" \
			"$B" load --addr "$addr" --conns 100 --delivery-path /r4 --requests "$n" >/dev/null 2>&1
	done
	a=$(callgrind_annotate "$OUT/$what.$WARM.callgrind" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
	b=$(callgrind_annotate "$OUT/$what.$((WARM + N)).callgrind" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
	echo "$what: ($b - $a) Ir over $N requests = $(((b - a) / N)) Ir/request ($OUT/$what.$((WARM + N)).callgrind)"
	;;
*)
	echo "unknown: $what" >&2
	exit 1
	;;
esac

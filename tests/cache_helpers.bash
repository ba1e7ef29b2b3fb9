# cache_helpers.bash - helpers for tests/cache.bats (the disk cache), on top of helpers.bash.
#
# What it does: fetches through the proxy into per-tag files (head + body), finds cache entry files by the
# `key:` line of their meta block, computes an entry's file name (FNV-1a 64 of the key), counts what an origin
# received and lists the cache= fields of the proxy's log lines.
# What it refuses: it only reads or touches files under $BATS_TEST_TMPDIR; it starts no process of its own
# (processes come from helpers.bash and are killed by PID there).
# Limits: every wait is bounded (HELPER_WAIT_SECS or the given seconds); every curl goes through pcurl
# (--max-time); an entry's meta block is read from its first 8 KB only.
#
# Use from a test file:
#   load helpers
#   load cache_helpers
#   setup()    { cache_setup; }
#   teardown() { helpers_teardown; }

# cache_setup: helpers_setup plus the cache defaults: TTL 3600 s for start_pibl, CACHE_DIR = the default
# cache folder of a proxy started by start_pibl (./cache in $BATS_TEST_TMPDIR).
cache_setup() {
    helpers_setup || return 1
    PIBL_TTL=3600
    CACHE_DIR="$BATS_TEST_TMPDIR/cache"
}

# fetch TAG PATH [CURL ARGS...]: one request through the proxy. The response head (CRs removed) goes to
# $BATS_TEST_TMPDIR/TAG.head and the body to TAG.body. Returns curl's exit status.
fetch() {
    local tag=$1 path=$2 rc=0
    shift 2
    rm -f "$BATS_TEST_TMPDIR/$tag.raw" "$BATS_TEST_TMPDIR/$tag.body"
    pcurl -D "$BATS_TEST_TMPDIR/$tag.raw" -o "$BATS_TEST_TMPDIR/$tag.body" "$@" "$(url "$path")" || rc=$?
    tr -d '\r' <"$BATS_TEST_TMPDIR/$tag.raw" >"$BATS_TEST_TMPDIR/$tag.head" 2>/dev/null || true
    [ -f "$BATS_TEST_TMPDIR/$tag.body" ] || : >"$BATS_TEST_TMPDIR/$tag.body"
    echo "fetch $tag $path -> rc $rc: $(head -n 1 "$BATS_TEST_TMPDIR/$tag.head" 2>/dev/null)" \
        "X-Cache=$(fheader "$tag" X-Cache) body=$(head -c 80 "$BATS_TEST_TMPDIR/$tag.body" | tr -d '\n')"
    return $rc
}

# fstatus TAG: the status code of the last response head of TAG (skips 1xx heads).
fstatus() {
    sed -n -E 's/^HTTP\/[0-9.]+ ([0-9]{3}).*/\1/p' "$BATS_TEST_TMPDIR/$1.head" | tail -n 1
}

# fheader TAG NAME: the value of header NAME (case-insensitive) in TAG's head; empty when absent.
fheader() {
    sed -n -E "s/^$2:[[:space:]]*//Ip" "$BATS_TEST_TMPDIR/$1.head" 2>/dev/null | tail -n 1
}

# fhas TAG NAME: 0 if TAG's head has a header NAME, 1 otherwise.
fhas() {
    grep -Eiq "^$2:" "$BATS_TEST_TMPDIR/$1.head"
}

# fbody TAG: the body of TAG.
fbody() {
    cat "$BATS_TEST_TMPDIR/$1.body"
}

# key_of PATH [HOST]: PIBL's cache key: http:// + lower-cased Host + request target. HOST defaults
# to what curl sends for url(): 127.0.0.1:PIBL_PORT.
key_of() {
    local host=${2:-127.0.0.1:$PIBL_PORT}
    echo "http://${host,,}$1"
}

# fnv1a64 STRING: FNV-1a 64 of the bytes of STRING (ASCII) as 16 lower-case hex digits. Bash arithmetic is
# 64-bit and wraps, which is the mod 2^64 FNV needs; the offset basis 0xcbf29ce484222325 is written signed.
fnv1a64() {
    local s=$1 h=-3750763034362895579 i c
    for ((i = 0; i < ${#s}; i++)); do
        printf -v c '%d' "'${s:i:1}"
        h=$(((h ^ c) * 1099511628211))
    done
    printf '%016x\n' "$h"
}

# entry_meta FILE: the meta block of a cache file (up to its first blank line), CRs removed.
entry_meta() {
    head -c 8192 "$1" | tr -d '\r' | sed -n '1,/^$/p' | sed '/^$/d'
}

# entry_file KEY [DIR]: the path of the cache file whose meta block says `key: KEY` (DIR defaults to CACHE_DIR);
# empty output when there is none.
entry_file() {
    local key=$1 dir=${2:-$CACHE_DIR} f
    for f in "$dir"/??/*; do
        [ -f "$f" ] || continue
        if head -c 8192 "$f" | tr -d '\r' | grep -aqxF "key: $key"; then
            echo "$f"
            return 0
        fi
    done
}

# wait_entry KEY [SECS]: poll until a complete entry for KEY exists. 0 = found, 1 = timeout.
wait_entry() {
    local key=$1 secs=${2:-$HELPER_WAIT_SECS} i
    for ((i = 0; i < secs * 20; i++)); do
        [ -n "$(entry_file "$key")" ] && return 0
        sleep 0.05
    done
    echo "timeout after ${secs}s waiting for a cache entry with key $key; cache folder:" >&2
    find "$CACHE_DIR" -ls 2>/dev/null | head -n 20 >&2
    return 1
}

# wait_no_entry KEY [SECS]: poll until no entry for KEY exists. 0 = gone, 1 = timeout.
wait_no_entry() {
    local key=$1 secs=${2:-$HELPER_WAIT_SECS} i
    for ((i = 0; i < secs * 20; i++)); do
        [ -z "$(entry_file "$key")" ] && return 0
        sleep 0.05
    done
    echo "timeout after ${secs}s: the entry for $key is still there" >&2
    return 1
}

# n_entries [DIR]: number of entry files under DIR (default CACHE_DIR), temp files excluded.
n_entries() {
    local dir=${1:-$CACHE_DIR}
    find "$dir" -mindepth 2 -maxdepth 2 -type f ! -name '.tmp-*' 2>/dev/null | wc -l
}

# wait_entries N [DIR]: wait until the cache folder holds N entries (fails after HELPER_WAIT_SECS).
wait_entries() {
    local i
    for ((i = 0; i < HELPER_WAIT_SECS * 20; i++)); do
        [ "$(n_entries "${2:-}")" -eq "$1" ] && return 0
        sleep 0.05
    done
    echo "the cache holds $(n_entries "${2:-}") entries, not $1" >&2
    return 1
}

# age_entry KEY WHEN: touch -d WHEN on KEY's entry file (fails when there is none).
age_entry() {
    local f
    f=$(entry_file "$1")
    [ -n "$f" ] || { echo "age_entry: no entry for $1" >&2; return 1; }
    touch -d "$2" "$f"
}

# origin_count NAME ERE: lines of origin NAME's request log (`NAME METHOD TARGET`) matching ERE.
origin_count() {
    count_lines "$(origin_log "$1")" "$2"
}

# origin_heads NAME: path of origin NAME's raw request head log.
origin_heads() {
    echo "$(origin_log "$1").heads"
}

# logged_request_re METHOD TARGET: an ERE for the request field of the proxy's log line of METHOD TARGET.
logged_request_re() {
    local t
    t=$(printf '%s' "$2" | sed -E 's/[][\.*^$?+(){}|]/\\&/g')
    echo "\"$1 $t HTTP/1\\.1\""
}

# wait_logged METHOD TARGET N [SECS]: wait until the proxy logged at least N exchanges of METHOD TARGET.
wait_logged() {
    wait_for_count "$PIBL_LOG" "$(logged_request_re "$1" "$2") " "$3" "${4:-$HELPER_WAIT_SECS}"
}

# cache_seq METHOD TARGET: the cache= fields of the proxy's log lines for METHOD TARGET, in order, space-separated.
cache_seq() {
    grep -E "$(logged_request_re "$1" "$2") " "$PIBL_LOG" 2>/dev/null | sed -n -E 's/.* cache=([A-Z-]+)( .*)?$/\1/p' |
        paste -sd' ' -
}

# digits SIZE: SIZE bytes of repeating 0123456789 on stdout (what /_bytes?size=SIZE sends).
digits() {
    yes 0123456789 | tr -d '\n' | head -c "$1"
}

# tmp_files [DIR]: the temp files (.tmp-*) under DIR (default CACHE_DIR), one per line.
tmp_files() {
    find "${1:-$CACHE_DIR}" -name '.tmp-*' 2>/dev/null
}

# wait_tmp_file [SECS]: poll until a .tmp-* file exists under CACHE_DIR. 0 = seen, 1 = timeout.
wait_tmp_file() {
    local secs=${1:-$HELPER_WAIT_SECS} i
    for ((i = 0; i < secs * 20; i++)); do
        [ -n "$(tmp_files)" ] && return 0
        sleep 0.05
    done
    echo "timeout after ${secs}s waiting for a .tmp-* file in $CACHE_DIR" >&2
    return 1
}

# bytes_after_head FILE: how many bytes of a raw reply in FILE follow its first blank line (-1 when the head
# never ended).
bytes_after_head() {
    local total head_end
    total=$(stat -c %s "$1")
    head_end=$(grep -abo $'^\r$' "$1" | head -n 1 | cut -d: -f1)
    if [ -z "$head_end" ]; then
        echo -1
        return
    fi
    echo $((total - head_end - 2))
}

# restart_pibl [LINES...]: start_pibl again in the same folder after the previous proxy was stopped. Empties
# PIBL_OUT first: start_pibl's redirection truncates it only once the background process runs, so without this
# it could read the previous run's startup line (and port).
restart_pibl() {
    : >"$PIBL_OUT"
    start_pibl "$@"
}

# wait_entry_line KEY LINE [SECS]: poll until KEY's entry has the exact meta line LINE (e.g. after a replacement
# is renamed into place). 0 = seen, 1 = timeout (prints the meta block it last saw).
wait_entry_line() {
    local key=$1 line=$2 secs=${3:-$HELPER_WAIT_SECS} i f
    for ((i = 0; i < secs * 20; i++)); do
        f=$(entry_file "$key")
        [ -n "$f" ] && entry_meta "$f" | grep -qxF -- "$line" && return 0
        sleep 0.05
    done
    echo "timeout after ${secs}s waiting for the line '$line' in the entry of $key; meta:" >&2
    [ -n "$f" ] && entry_meta "$f" >&2
    return 1
}

# entry_lifetime KEY: the decimal lifetime: of KEY's entry (empty when there is no entry).
entry_lifetime() {
    local f v
    f=$(entry_file "$1")
    [ -n "$f" ] || return 0
    v=$(entry_meta "$f" | sed -n 's/^lifetime: *//p')
    [ -n "$v" ] && echo $((10#$v))
}

# tmpfs_namespace_ok DIR: 0 if this shell may mount a tmpfs on DIR inside a private mount namespace
# (unshare -m; root or CAP_SYS_ADMIN). The probe's namespace and mount vanish with its shell.
tmpfs_namespace_ok() {
    mkdir -p "$1" || return 1
    command -v unshare >/dev/null 2>&1 || return 1
    # shellcheck disable=SC2016 # $1 is the inner sh's argument
    timeout 5 unshare -m sh -c 'mount -t tmpfs -o size=64k tmpfs "$1" && : >"$1/probe"' sh "$1" \
        >/dev/null 2>&1 || return 1
    # the probe file was written on the tmpfs, not on the folder underneath
    [ ! -e "$1/probe" ]
}

# make_tmpfs_pibl WRAPPER DIR SIZE: write an executable WRAPPER that runs the real pibl (PIBL_BIN as it is now)
# with its arguments in a private mount namespace where DIR is a tmpfs of SIZE. unshare, sh and pibl each
# exec in turn, so the wrapper's PID is pibl's PID; the namespace and the mount disappear when pibl exits.
# Outside, DIR stays an empty folder: read the tmpfs through /proc/PID/root/DIR.
make_tmpfs_pibl() {
    local wrapper=$1 dir=$2 size=$3
    mkdir -p "$dir" || return 1
    {
        echo '#!/bin/sh'
        # the inner script is constant; only the three values are quoted for sh (%q)
        printf '%s %q %q %q "$@"\n' \
            "exec unshare -m sh -c 'mount -t tmpfs -o \"size=\$1\" tmpfs \"\$2\" || exit 2; shift 2; exec \"\$@\"' sh" \
            "$size" "$dir" "$PIBL_BIN"
    } >"$wrapper"
    chmod +x "$wrapper"
}

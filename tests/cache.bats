#!/usr/bin/env bats
# cache.bats - the disk cache: hits and misses, HEAD, hits with every backend gone and after
# a restart, expiry by mtime (touch -d, never sleep), revalidation, max-age against the launch TTL, what is not
# stored, key separation, cache_heuristic, Vary, Expires, Last-Modified revalidation, invalidation by unsafe
# methods, conditional hits, a 100 MB entry, a crash while storing, a corrupted entry, an open entry changed on
# disk (in place, renamed over, removed, renamed away, its folder renamed), a full disk (ENOSPC, on a
# tmpfs in a private mount namespace), collapsed concurrent misses, PURGE, stale-if-error, cache off and an
# unusable cache folder.
# Each test starts its origins and the proxy in $BATS_TEST_TMPDIR (the proxy's working folder, so the cache is
# ./cache there) on 127.0.0.1, checks headers, bodies, what the origin received and the proxy's log lines, and
# kills only the PIDs it started (helpers.bash).
# The origin's /_cache body is "cache-body NAME n=<count of /_cache requests that origin saw>" (plus
# " vary=<the request's value>" with vary=NAME), so a body tells which fetch it came from.

bats_require_minimum_version 1.5.0
load helpers
load cache_helpers

setup() { cache_setup; }
teardown() { helpers_teardown; }

# ---------------------------------------------------------------- hits

@test "cache: second GET is a HIT with Age, the origin saw one request, log says MISS then HIT, entry file holds the key" {
    start_origin o1
    start_pibl
    local t='/_cache?max_age=600' key f meta size meta_len head_len body_len
    key=$(key_of "$t")

    fetch a "$t"
    [ "$(fstatus a)" = 200 ]
    [ "$(fheader a X-Cache)" = MISS ]
    [[ "$(fheader a Cache-Status)" =~ ^pibl\;\ fwd=uri-miss\;\ stored$ ]]
    [ "$(fbody a)" = "cache-body o1 n=1" ]
    wait_entry "$key"

    fetch b "$t"
    [ "$(fstatus b)" = 200 ]
    [ "$(fheader b X-Cache)" = HIT ]
    [[ "$(fheader b Cache-Status)" =~ ^pibl\;\ hit\;\ ttl=(600|599|598)$ ]]
    [[ "$(fheader b Age)" =~ ^[0-2]$ ]]
    [ "$(fheader b X-Backend)" = o1 ]
    [ "$(fbody b)" = "cache-body o1 n=1" ]
    [ "$(origin_count o1 '^o1 GET /_cache')" -eq 1 ]

    wait_logged GET "$t" 2
    echo "log cache fields: $(cache_seq GET "$t")"
    [ "$(cache_seq GET "$t")" = "MISS HIT" ]

    # <cache_dir>/<2 hex>/<16 hex = FNV-1a 64 of the key>, with its meta block
    f=$(entry_file "$key")
    echo "entry: $f, expected name $(fnv1a64 "$key")"
    [[ "$f" =~ ^$CACHE_DIR/[0-9a-f]{2}/[0-9a-f]{16}$ ]]
    [ "$(basename "$f")" = "$(fnv1a64 "$key")" ]
    [ "$(n_entries)" -eq 1 ]
    meta=$(entry_meta "$f")
    echo "$meta"
    [ "$(printf '%s\n' "$meta" | head -n 1)" = "PIBL-CACHE 1" ]
    printf '%s\n' "$meta" | grep -qx "key: $key"
    printf '%s\n' "$meta" | grep -qx 'status: 200'
    printf '%s\n' "$meta" | grep -qx 'lifetime: 600'
    # numbers may be zero-padded: read them as decimal
    body_len=$((10#$(printf '%s\n' "$meta" | sed -n 's/^body-length: *//p')))
    head_len=$((10#$(printf '%s\n' "$meta" | sed -n 's/^head-length: *//p')))
    [ "$body_len" -eq 18 ]
    # file = meta block + blank line + stored head + body
    meta_len=$(head -c 8192 "$f" | sed -n '1,/^$/p' | wc -c)
    size=$(stat -c %s "$f")
    echo "size $size = meta $meta_len + head $head_len + body $body_len ?"
    [ "$size" -eq $((meta_len + head_len + body_len)) ]
    [ "$(tail -c 18 "$f")" = "cache-body o1 n=1" ]
}

@test "cache: a response without freshness information is stored for the launch TTL (cache_heuristic on by default)" {
    start_origin o1
    PIBL_TTL=1234
    start_pibl
    local t='/_cache' f
    fetch a "$t"
    [ "$(fheader a X-Cache)" = MISS ]
    wait_entry "$(key_of "$t")"
    f=$(entry_file "$(key_of "$t")")
    entry_meta "$f" | grep -qx 'lifetime: 1234'
    fetch b "$t"
    [ "$(fheader b X-Cache)" = HIT ]
    [ "$(fbody b)" = "cache-body o1 n=1" ]
    [ "$(origin_count o1 '^o1 GET /_cache$')" -eq 1 ]
}

@test "cache: HEAD after GET is a HIT without a body; a HEAD miss is forwarded and not stored" {
    start_origin o1
    start_pibl
    local t='/_cache?max_age=600' req
    fetch a "$t"
    [ "$(fbody a)" = "cache-body o1 n=1" ]
    wait_entry "$(key_of "$t")"

    req=$'HEAD /_cache?max_age=600 HTTP/1.1\r\nHost: 127.0.0.1:'"$PIBL_PORT"$'\r\nConnection: close\r\n\r\n'
    raw_request "$PIBL_PORT" "$req" 5 >"$BATS_TEST_TMPDIR/head1.raw"
    output=$(cat "$BATS_TEST_TMPDIR/head1.raw")
    echo "$output"
    [ "$(status_of "$output")" = 200 ]
    [ "$(header_value "$output" X-Cache)" = HIT ]
    [ "$(header_value "$output" Content-Length)" = 18 ]
    [ "$(bytes_after_head "$BATS_TEST_TMPDIR/head1.raw")" -eq 0 ]
    [ "$(origin_count o1 '^o1 (GET|HEAD) /_cache')" -eq 1 ]

    # HEAD on a key nobody fetched yet: goes to the origin, leaves no entry, the next GET is a MISS
    req=$'HEAD /_cache?max_age=600&h=1 HTTP/1.1\r\nHost: 127.0.0.1:'"$PIBL_PORT"$'\r\nConnection: close\r\n\r\n'
    raw_request "$PIBL_PORT" "$req" 5 >"$BATS_TEST_TMPDIR/head2.raw"
    output=$(cat "$BATS_TEST_TMPDIR/head2.raw")
    echo "$output"
    [ "$(status_of "$output")" = 200 ]
    [ "$(header_value "$output" X-Cache)" != HIT ]
    [ "$(bytes_after_head "$BATS_TEST_TMPDIR/head2.raw")" -eq 0 ]
    [ "$(origin_count o1 '^o1 HEAD /_cache\?max_age=600&h=1$')" -eq 1 ]
    wait_logged HEAD '/_cache?max_age=600&h=1' 1
    [ -z "$(entry_file "$(key_of '/_cache?max_age=600&h=1')")" ]
    fetch b '/_cache?max_age=600&h=1'
    [ "$(fheader b X-Cache)" = MISS ]
    [ "$(fbody b)" = "cache-body o1 n=3" ]
}

@test "cache: hits are served with every backend stopped" {
    start_origin o1
    start_origin o2
    start_pibl
    local t='/_cache?max_age=600'
    fetch a "$t"
    [ "$(fbody a)" = "cache-body o1 n=1" ]
    wait_entry "$(key_of "$t")"
    stop_origin o1
    stop_origin o2

    fetch b "$t"
    [ "$(fstatus b)" = 200 ]
    [ "$(fheader b X-Cache)" = HIT ]
    [ "$(fbody b)" = "cache-body o1 n=1" ]
    fetch c "$t"
    [ "$(fstatus c)" = 200 ]
    [ "$(fbody c)" = "cache-body o1 n=1" ]
    # control: the backends really are gone
    fetch d '/_cache?max_age=600&other=1'
    [[ "$(fstatus d)" =~ ^50[23]$ ]]
}

@test "cache: an entry is a HIT after a proxy restart in the same folder with no backend running" {
    start_origin o1
    start_pibl
    local t='/_cache?max_age=600'
    fetch a "$t" -H 'Host: cache.test'
    [ "$(fbody a)" = "cache-body o1 n=1" ]
    wait_entry "$(key_of "$t" cache.test)"
    stop_pid "$PIBL_PID" >/dev/null
    stop_origin o1

    restart_pibl
    fetch b "$t" -H 'Host: cache.test'
    [ "$(fstatus b)" = 200 ]
    [ "$(fheader b X-Cache)" = HIT ]
    [[ "$(fheader b Age)" =~ ^[0-9]+$ ]]
    [ "$(fbody b)" = "cache-body o1 n=1" ]
    [ "$(origin_count o1 '^o1 GET /_cache')" -eq 1 ]
}

@test "cache: HITs and a MISS pipelined on one connection come back in order and correctly framed; HTTP/1.0 HIT" {
    start_origin o1
    start_pibl
    local h="Host: 127.0.0.1:$PIBL_PORT" raw
    fetch a '/_cache?max_age=600&p=1'
    fetch b '/_cache?max_age=600&p=2'
    wait_entry "$(key_of '/_cache?max_age=600&p=1')"
    wait_entry "$(key_of '/_cache?max_age=600&p=2')"
    raw="GET /_cache?max_age=600&p=1 HTTP/1.1"$'\r\n'"$h"$'\r\n\r\n'
    raw+="GET /_cache?max_age=600&p=2 HTTP/1.1"$'\r\n'"$h"$'\r\n\r\n'
    raw+="GET /_cache?max_age=600&p=3 HTTP/1.1"$'\r\n'"$h"$'\r\n\r\n'
    raw+="GET /_cache?max_age=600&p=1 HTTP/1.1"$'\r\n'"$h"$'\r\nConnection: close\r\n\r\n'
    raw_request "$PIBL_PORT" "$raw" 5 >"$BATS_TEST_TMPDIR/pipe.raw"
    cat -v "$BATS_TEST_TMPDIR/pipe.raw"
    [ "$(grep -ac '^HTTP/1.1 200 ' "$BATS_TEST_TMPDIR/pipe.raw")" -eq 4 ]
    [ "$(tr -d '\r' <"$BATS_TEST_TMPDIR/pipe.raw" | sed -n 's/^X-Cache: //p' | paste -sd' ' -)" = "HIT HIT MISS HIT" ]
    [ "$(grep -a '^cache-body' "$BATS_TEST_TMPDIR/pipe.raw" | paste -sd' ' -)" = \
      "cache-body o1 n=1 cache-body o1 n=2 cache-body o1 n=3 cache-body o1 n=1" ]
    # nothing after the last body
    [ "$(tail -c 18 "$BATS_TEST_TMPDIR/pipe.raw")" = "cache-body o1 n=1" ]

    raw_request "$PIBL_PORT" "GET /_cache?max_age=600&p=2 HTTP/1.0"$'\r\n'"$h"$'\r\n\r\n' 5 >"$BATS_TEST_TMPDIR/old.raw"
    cat -v "$BATS_TEST_TMPDIR/old.raw"
    grep -aq $'^X-Cache: HIT\r$' "$BATS_TEST_TMPDIR/old.raw"
    [ "$(bytes_after_head "$BATS_TEST_TMPDIR/old.raw")" -eq 18 ]
    [ "$(tail -c 18 "$BATS_TEST_TMPDIR/old.raw")" = "cache-body o1 n=2" ]
    [ "$(origin_count o1 '^o1 GET /_cache')" -eq 3 ]
}

# ---------------------------------------------------------------- expiry and revalidation

@test "cache: an entry aged with touch -d '-2 hours' is EXPIRED, fetched again and replaced" {
    start_origin o1
    start_pibl
    local t='/_cache?max_age=600' key
    key=$(key_of "$t")
    fetch a "$t"
    wait_entry "$key"
    age_entry "$key" '-2 hours'

    fetch b "$t"
    [ "$(fstatus b)" = 200 ]
    [ "$(fheader b X-Cache)" = EXPIRED ]
    [ "$(fbody b)" = "cache-body o1 n=2" ]
    [ "$(origin_count o1 '^o1 GET /_cache')" -eq 2 ]
    # no validator: the origin was asked without If-None-Match
    run ! grep -qi '^If-None-Match:' "$(origin_heads o1)"

    wait_logged GET "$t" 2
    [ "$(cache_seq GET "$t")" = "MISS EXPIRED" ]
    # the new answer replaced the entry
    fetch c "$t"
    [ "$(fheader c X-Cache)" = HIT ]
    [ "$(fbody c)" = "cache-body o1 n=2" ]
    [ "$(origin_count o1 '^o1 GET /_cache')" -eq 2 ]
}

@test "cache: an expired entry with an ETag is revalidated; the origin's 304 gives the client the stored body and refreshes the mtime" {
    start_origin o1
    start_pibl
    local t='/_cache?max_age=600&etag=v1' key f mtime
    key=$(key_of "$t")
    fetch a "$t"
    [ "$(fheader a ETag)" = '"v1"' ]
    wait_entry "$key"
    age_entry "$key" '-2 hours'
    f=$(entry_file "$key")
    mtime=$(stat -c %Y "$f")

    fetch b "$t"
    [ "$(fstatus b)" = 200 ]
    [ "$(fheader b X-Cache)" = EXPIRED ]
    [[ "$(fheader b Age)" =~ ^[0-9]+$ ]]
    [ "$(fbody b)" = "cache-body o1 n=1" ]
    [ "$(origin_count o1 '^o1 GET /_cache')" -eq 2 ]
    grep -Eiq '^If-None-Match: *"v1"' "$(origin_heads o1)"

    f=$(entry_file "$key")
    echo "mtime before $mtime, after $(stat -c %Y "$f")"
    [ "$(stat -c %Y "$f")" -gt $((mtime + 3600)) ]
    fetch c "$t"
    [ "$(fheader c X-Cache)" = HIT ]
    [ "$(fbody c)" = "cache-body o1 n=1" ]
    [ "$(origin_count o1 '^o1 GET /_cache')" -eq 2 ]
}

@test "cache: an origin max-age shorter than the launch TTL wins" {
    start_origin o1
    start_pibl
    local short='/_cache?max_age=1' long='/_cache?max_age=600'
    fetch a "$short"
    fetch b "$long"
    wait_entry "$(key_of "$short")"
    wait_entry "$(key_of "$long")"
    entry_meta "$(entry_file "$(key_of "$short")")" | grep -qx 'lifetime: 1'
    age_entry "$(key_of "$short")" '-5 seconds'
    age_entry "$(key_of "$long")" '-5 seconds'

    fetch c "$short"
    [ "$(fheader c X-Cache)" = EXPIRED ]
    [ "$(fbody c)" = "cache-body o1 n=3" ]
    # control: the same age is fresh for max-age=600
    fetch d "$long"
    [ "$(fheader d X-Cache)" = HIT ]
    [ "$(fbody d)" = "cache-body o1 n=2" ]

    # s-maxage wins over max-age for a shared cache (RFC 9111 5.2.2.10)
    local shared='/_cache?cc=max-age%3D600%2C%20s-maxage%3D1'
    fetch e "$shared"
    [ "$(fheader e Cache-Control)" = 'max-age=600, s-maxage=1' ]
    wait_entry "$(key_of "$shared")"
    entry_meta "$(entry_file "$(key_of "$shared")")" | grep -qx 'lifetime: 1'
    age_entry "$(key_of "$shared")" '-5 seconds'
    fetch f "$shared"
    [ "$(fheader f X-Cache)" = EXPIRED ]
    [ "$(fbody f)" = "cache-body o1 n=5" ]
}

@test "cache: the launch TTL caps a longer origin max-age" {
    start_origin o1
    PIBL_TTL=60
    start_pibl
    local t='/_cache?max_age=100000' key
    key=$(key_of "$t")
    fetch a "$t"
    wait_entry "$key"
    entry_meta "$(entry_file "$key")" | grep -qx 'lifetime: 60'
    age_entry "$key" '-30 seconds'
    fetch b "$t"
    [ "$(fheader b X-Cache)" = HIT ]
    [ "$(fbody b)" = "cache-body o1 n=1" ]
    # Age counts from the entry's mtime (RFC 9111 4.2.3)
    [ "$(fheader b Age)" -ge 30 ]
    age_entry "$key" '-2 minutes'
    fetch c "$t"
    [ "$(fheader c X-Cache)" = EXPIRED ]
    [ "$(fbody c)" = "cache-body o1 n=2" ]
}

# ---------------------------------------------------------------- what is not stored

@test "cache: responses with no-store, private or Set-Cookie are not stored" {
    start_origin o1
    start_pibl
    local t n=0
    for t in '/_cache?cc=no-store' '/_cache?cc=private' '/_cache?max_age=600&cookie=1'; do
        fetch a "$t"
        [ "$(fstatus a)" = 200 ]
        [ "$(fbody a)" = "cache-body o1 n=$((n + 1))" ]
        fetch b "$t"
        [ "$(fstatus b)" = 200 ]
        [ "$(fheader b X-Cache)" = MISS ]
        [ "$(fbody b)" = "cache-body o1 n=$((n + 2))" ]
        n=$((n + 2))
        wait_logged GET "$t" 2
        [ "$(cache_seq GET "$t")" = "MISS MISS" ]
        [ -z "$(entry_file "$(key_of "$t")")" ]
    done
    [ "$(origin_count o1 '^o1 GET /_cache')" -eq 6 ]
    # a status outside the storable list (500, 302) is not stored either
    for t in /_status/500 /_status/302; do
        fetch a "$t"
        wait_logged GET "$t" 1
        fetch b "$t"
        [ "$(fstatus b)" = "${t#/_status/}" ]
        [ "$(fheader b X-Cache)" = MISS ]
        [ "$(origin_count o1 "^o1 GET $t\$")" -eq 2 ]
    done
    [ "$(n_entries)" -eq 0 ]
}

@test "cache: POST is a BYPASS and is not stored" {
    start_origin o1
    start_pibl
    local t='/_cache?max_age=600'
    fetch a "$t" -d 'x=1'
    [ "$(fstatus a)" = 200 ]
    [ "$(fheader a X-Cache)" = BYPASS ]
    [ "$(fbody a)" = "cache-body o1 n=1" ]
    wait_logged POST "$t" 1
    [ "$(cache_seq POST "$t")" = BYPASS ]
    [ "$(n_entries)" -eq 0 ]
    fetch b "$t"
    [ "$(fheader b X-Cache)" = MISS ]
    [ "$(fbody b)" = "cache-body o1 n=2" ]
    [ "$(origin_count o1 '^o1 POST /_cache')" -eq 1 ]
    [ "$(origin_count o1 '^o1 GET /_cache')" -eq 1 ]
}

@test "cache: methods are case-sensitive: get is not GET (its answer is not stored), head is not HEAD (its answer keeps its body)" {
    start_origin o1
    start_pibl
    local t='/_cache?max_age=600' req len
    # RFC 9110 9.1: "get" is an unknown method; like every method not known safe, it is forwarded and stored nowhere
    fetch a "$t" -X get
    echo "get: $(fstatus a) $(fheader a X-Cache)"
    [ "$(fheader a X-Cache)" = BYPASS ]
    wait_logged get "$t" 1
    [ "$(origin_count o1 '^o1 get /_cache')" -eq 1 ]
    [ "$(n_entries)" -eq 0 ]
    fetch b "$t"
    [ "$(fstatus b)" = 200 ]
    [ "$(fheader b X-Cache)" = MISS ]
    [[ "$(fbody b)" =~ ^cache-body\ o1\ n= ]]

    # "head" is not HEAD: the answer is framed by its Content-Length and its body comes through
    req=$'head /hello.txt HTTP/1.1\r\nHost: 127.0.0.1:'"$PIBL_PORT"$'\r\nConnection: close\r\n\r\n'
    raw_request "$PIBL_PORT" "$req" 5 >"$BATS_TEST_TMPDIR/lhead.raw"
    output=$(tr -d '\r' <"$BATS_TEST_TMPDIR/lhead.raw")
    echo "$output"
    len=$(header_value "$output" Content-Length)
    [ -n "$len" ]
    [ "$len" -gt 0 ]
    [ "$(bytes_after_head "$BATS_TEST_TMPDIR/lhead.raw")" -eq "$len" ]
}

@test "cache: a request with Cache-Control: no-store is a BYPASS and its answer is not stored" {
    start_origin o1
    start_pibl
    local t='/_cache?max_age=600'
    fetch a "$t" -H 'Cache-Control: no-store'
    [ "$(fstatus a)" = 200 ]
    [ "$(fheader a X-Cache)" = BYPASS ]
    wait_logged GET "$t" 1
    [ "$(n_entries)" -eq 0 ]
    fetch b "$t"
    [ "$(fheader b X-Cache)" = MISS ]
    [ "$(fbody b)" = "cache-body o1 n=2" ]
    [ "$(origin_count o1 '^o1 GET /_cache')" -eq 2 ]
}

@test "cache: a request with Cache-Control: no-cache (or Pragma: no-cache) goes to the origin about the stored entry (EXPIRED, RFC 9111 5.2.1.4) and refreshes it" {
    start_origin o1
    start_pibl
    local t='/_cache?max_age=600' key
    key=$(key_of "$t")
    fetch a "$t"
    wait_entry "$key"

    fetch b "$t" -H 'Cache-Control: no-cache'
    [ "$(fstatus b)" = 200 ]
    [ "$(fheader b X-Cache)" = EXPIRED ]
    [ "$(fbody b)" = "cache-body o1 n=2" ]
    [ "$(origin_count o1 '^o1 GET /_cache')" -eq 2 ]
    wait_logged GET "$t" 2
    fetch c "$t"
    [ "$(fheader c X-Cache)" = HIT ]
    [ "$(fbody c)" = "cache-body o1 n=2" ]

    fetch d "$t" -H 'Pragma: no-cache'
    [ "$(fheader d X-Cache)" = EXPIRED ]
    [ "$(fbody d)" = "cache-body o1 n=3" ]
    wait_logged GET "$t" 4
    fetch e "$t"
    [ "$(fheader e X-Cache)" = HIT ]
    [ "$(fbody e)" = "cache-body o1 n=3" ]
    [ "$(origin_count o1 '^o1 GET /_cache')" -eq 3 ]
    [ "$(cache_seq GET "$t")" = "MISS EXPIRED HIT EXPIRED HIT" ]
}

@test "cache: a request's max-age and min-fresh turn down an entry too old or too close to its end (EXPIRED); only-if-cached is 504 without a fresh entry" {
    start_origin o1
    start_pibl
    local t='/_cache?max_age=600' key
    key=$(key_of "$t")
    fetch a "$t"
    wait_entry "$key"
    age_entry "$key" '-30 seconds'
    # age about 30 s, 570 s of freshness left
    fetch b "$t" -H 'Cache-Control: max-age=100'
    [ "$(fheader b X-Cache)" = HIT ]
    fetch c "$t" -H 'Cache-Control: min-fresh=60'
    [ "$(fheader c X-Cache)" = HIT ]
    fetch d "$t" -H 'Cache-Control: only-if-cached'
    [ "$(fheader d X-Cache)" = HIT ]
    [ "$(origin_count o1 '^o1 GET /_cache')" -eq 1 ]
    fetch e "$t" -H 'Cache-Control: max-age=10'
    echo "max-age=10: $(fheader e X-Cache) $(fheader e Cache-Status) $(fbody e)"
    [ "$(fheader e X-Cache)" = EXPIRED ]
    [[ "$(fheader e Cache-Status)" == *fwd=request* ]]
    [ "$(fbody e)" = "cache-body o1 n=2" ]
    # the refetched answer replaces the entry (renamed into place once whole): wait for its body, then age it
    local i
    for ((i = 0; i < 100; i++)); do
        [ "$(tail -c 18 "$(entry_file "$key")" 2>/dev/null)" = "cache-body o1 n=2" ] && break
        sleep 0.05
    done
    [ "$i" -lt 100 ]
    age_entry "$key" '-30 seconds'
    fetch f "$t" -H 'Cache-Control: min-fresh=590'
    echo "min-fresh=590: $(fheader f X-Cache) $(fbody f)"
    [ "$(fheader f X-Cache)" = EXPIRED ]
    [ "$(fbody f)" = "cache-body o1 n=3" ]
    # only-if-cached (RFC 9111 5.2.1.7): nothing stored, or only a stale entry, is a 504 and the origin never hears of it
    fetch g '/_cache?max_age=600&absent=1' -H 'Cache-Control: only-if-cached'
    [ "$(fstatus g)" = 504 ]
    age_entry "$key" '-2 hours'
    fetch h "$t" -H 'Cache-Control: only-if-cached'
    [ "$(fstatus h)" = 504 ]
    [ "$(origin_count o1 '^o1 GET /_cache')" -eq 3 ]
    fetch i "$t"
    [ "$(fheader i X-Cache)" = EXPIRED ]
    [ "$(fbody i)" = "cache-body o1 n=4" ]
}

@test "cache: a request with Authorization is not stored unless the answer says public" {
    start_origin o1
    start_pibl
    local t='/_cache?max_age=600' pub='/_cache?cc=public%2C%20max-age%3D600'
    fetch a "$t" -H 'Authorization: Bearer secret-a'
    fetch b "$t" -H 'Authorization: Bearer secret-a'
    [ "$(fstatus b)" = 200 ]
    [ "$(fheader b X-Cache)" != HIT ]
    [ "$(fbody b)" = "cache-body o1 n=2" ]
    [ -z "$(entry_file "$(key_of "$t")")" ]

    fetch c "$pub" -H 'Authorization: Bearer secret-a'
    [ "$(fheader c Cache-Control)" = 'public, max-age=600' ]
    [ "$(fbody c)" = "cache-body o1 n=3" ]
    wait_entry "$(key_of "$pub")"
    fetch d "$pub" -H 'Authorization: Bearer secret-a'
    [ "$(fheader d X-Cache)" = HIT ]
    [ "$(fbody d)" = "cache-body o1 n=3" ]
    [ "$(origin_count o1 '^o1 GET /_cache')" -eq 3 ]
}

# ---------------------------------------------------------------- the key

@test "cache: query strings and hosts are kept apart (host compared lower-cased)" {
    start_origin o1
    start_pibl
    fetch a '/_cache?max_age=600&a=1'
    wait_entry "$(key_of '/_cache?max_age=600&a=1')"
    fetch b '/_cache?max_age=600&a=2'
    [ "$(fheader b X-Cache)" = MISS ]
    [ "$(fbody b)" = "cache-body o1 n=2" ]
    wait_entry "$(key_of '/_cache?max_age=600&a=2')"
    fetch c '/_cache?max_age=600&a=1'
    [ "$(fheader c X-Cache)" = HIT ]
    [ "$(fbody c)" = "cache-body o1 n=1" ]
    fetch d '/_cache?max_age=600&a=2'
    [ "$(fbody d)" = "cache-body o1 n=2" ]

    fetch e '/_cache?max_age=600' -H 'Host: a.test'
    [ "$(fheader e X-Cache)" = MISS ]
    [ "$(fbody e)" = "cache-body o1 n=3" ]
    wait_entry "$(key_of '/_cache?max_age=600' a.test)"
    fetch f '/_cache?max_age=600' -H 'Host: b.test'
    [ "$(fheader f X-Cache)" = MISS ]
    [ "$(fbody f)" = "cache-body o1 n=4" ]
    wait_entry "$(key_of '/_cache?max_age=600' b.test)"
    fetch g '/_cache?max_age=600' -H 'Host: A.Test'
    [ "$(fheader g X-Cache)" = HIT ]
    [ "$(fbody g)" = "cache-body o1 n=3" ]
    fetch h '/_cache?max_age=600' -H 'Host: b.test'
    [ "$(fbody h)" = "cache-body o1 n=4" ]
    [ "$(origin_count o1 '^o1 GET /_cache')" -eq 4 ]
    [ "$(n_entries)" -eq 4 ]
}

# ---------------------------------------------------------------- heuristics and validators

@test "cache: cache_heuristic = off: no freshness and no validator is never reused; a validator alone is revalidated" {
    start_origin o1
    start_pibl 'cache_heuristic = off'
    fetch a '/_cache'
    fetch b '/_cache'
    [ "$(fstatus b)" = 200 ]
    [ "$(fheader b X-Cache)" = MISS ]
    [ "$(fbody b)" = "cache-body o1 n=2" ]
    [ "$(origin_count o1 '^o1 GET /_cache$')" -eq 2 ]
    wait_logged GET '/_cache' 2
    [ -z "$(entry_file "$(key_of '/_cache')")" ]

    # validator only: stored, and every reuse asks the origin with If-None-Match; its 304 serves the stored body
    fetch c '/_cache?etag=v1'
    [ "$(fbody c)" = "cache-body o1 n=3" ]
    wait_entry "$(key_of '/_cache?etag=v1')"
    fetch d '/_cache?etag=v1'
    [ "$(fstatus d)" = 200 ]
    [ "$(fheader d X-Cache)" = EXPIRED ]
    [ "$(fbody d)" = "cache-body o1 n=3" ]
    [ "$(origin_count o1 '^o1 GET /_cache\?etag=v1$')" -eq 2 ]
    grep -Eiq '^If-None-Match: *"v1"' "$(origin_heads o1)"

    # explicit freshness still works with the heuristic off
    fetch e '/_cache?max_age=600'
    wait_entry "$(key_of '/_cache?max_age=600')"
    fetch f '/_cache?max_age=600'
    [ "$(fheader f X-Cache)" = HIT ]
    [ "$(fbody f)" = "cache-body o1 n=5" ]
}

@test "cache: response no-cache is stored only with a validator, and revalidated on every request" {
    start_origin o1
    start_pibl
    fetch a '/_cache?cc=no-cache'
    fetch b '/_cache?cc=no-cache'
    [ "$(fheader b X-Cache)" = MISS ]
    [ "$(fbody b)" = "cache-body o1 n=2" ]
    wait_logged GET '/_cache?cc=no-cache' 2
    [ -z "$(entry_file "$(key_of '/_cache?cc=no-cache')")" ]

    local t='/_cache?cc=no-cache&etag=v2'
    fetch c "$t"
    [ "$(fbody c)" = "cache-body o1 n=3" ]
    wait_entry "$(key_of "$t")"
    fetch d "$t"
    fetch e "$t"
    [ "$(fstatus e)" = 200 ]
    [ "$(fheader e X-Cache)" = EXPIRED ]
    [ "$(fbody d)" = "cache-body o1 n=3" ]
    [ "$(fbody e)" = "cache-body o1 n=3" ]
    [ "$(origin_count o1 '^o1 GET /_cache\?cc=no-cache&etag=v2$')" -eq 3 ]
    [ "$(grep -Eic '^If-None-Match: *"v2"' "$(origin_heads o1)")" -eq 2 ]
}

# ---------------------------------------------------------------- Vary, Expires, Last-Modified

@test "cache: Vary: Accept-Language: same value HIT; another value (or none) is a MISS stored beside it, each served after; Vary: * is never stored" {
    start_origin o1
    start_pibl
    local t='/_cache?max_age=600&vary=Accept-Language' key
    key=$(key_of "$t")
    fetch a "$t" -H 'Accept-Language: es'
    [ "$(fstatus a)" = 200 ]
    [ "$(fheader a X-Cache)" = MISS ]
    [ "$(fheader a Vary)" = Accept-Language ]
    [ "$(fbody a)" = "cache-body o1 n=1 vary=es" ]
    wait_entry_line "$key" 'vary: accept-language=es'
    fetch b "$t" -H 'Accept-Language: es'
    [ "$(fstatus b)" = 200 ]
    [ "$(fheader b X-Cache)" = HIT ]
    [ "$(fbody b)" = "cache-body o1 n=1 vary=es" ]
    [ "$(origin_count o1 '^o1 GET /_cache')" -eq 1 ]

    # another value: asked again, and stored beside es (a variant slot of the same URL)
    fetch c "$t" -H 'Accept-Language: en'
    [ "$(fstatus c)" = 200 ]
    [ "$(fheader c X-Cache)" = MISS ]
    [ "$(fbody c)" = "cache-body o1 n=2 vary=en" ]
    [ "$(origin_count o1 '^o1 GET /_cache')" -eq 2 ]
    wait_entries 2
    grep -rlaqx 'vary: accept-language=en' "$CACHE_DIR"
    fetch d "$t" -H 'Accept-Language: en'
    [ "$(fheader d X-Cache)" = HIT ]
    [ "$(fbody d)" = "cache-body o1 n=2 vary=en" ]
    fetch e "$t" -H 'Accept-Language: es'
    [ "$(fheader e X-Cache)" = HIT ]
    [ "$(fbody e)" = "cache-body o1 n=1 vary=es" ]
    [ "$(origin_count o1 '^o1 GET /_cache')" -eq 2 ]
    # a request without the field only matches an entry stored without it (RFC 9111 4.1)
    fetch f "$t"
    [ "$(fheader f X-Cache)" = MISS ]
    [ "$(fbody f)" = "cache-body o1 n=3 vary=" ]
    wait_entries 3
    fetch g "$t"
    [ "$(fheader g X-Cache)" = HIT ]
    [ "$(fbody g)" = "cache-body o1 n=3 vary=" ]
    [ "$(origin_count o1 '^o1 GET /_cache')" -eq 3 ]
    wait_logged GET "$t" 7
    [ "$(cache_seq GET "$t")" = "MISS HIT MISS HIT HIT MISS HIT" ]

    # a bound per URL: twenty languages leave at most 1 + 8 entries, each still answered right
    local l
    for l in a b c d e f g h i j k l m n o p q r s t; do
        fetch "l$l" "$t" -H "Accept-Language: x-$l"
        [ "$(fbody "l$l")" = "cache-body o1 n=$(origin_count o1 '^o1 GET /_cache') vary=x-$l" ]
    done
    [ "$(n_entries)" -le 9 ]
    # PURGE drops the URL and every variant
    fetch p "$t" -X PURGE
    [ "$(fstatus p)" = 200 ]
    [ "$(n_entries)" -eq 0 ]
    fetch h "$t" -H 'Accept-Language: en'
    [ "$(fheader h X-Cache)" = MISS ]

    # Vary: * can never be matched by a later request (RFC 9111 4.1): not stored
    local star='/_cache?max_age=600&vary=*'
    fetch g "$star"
    [ "$(fstatus g)" = 200 ]
    [ "$(fheader g Vary)" = '*' ]
    [ "$(fbody g)" = "cache-body o1 n=25 vary=*" ]
    fetch h "$star"
    [ "$(fstatus h)" = 200 ]
    [ "$(fheader h X-Cache)" = MISS ]
    [ "$(fbody h)" = "cache-body o1 n=26 vary=*" ]
    wait_logged GET "$star" 2
    [ "$(cache_seq GET "$star")" = "MISS MISS" ]
    [ -z "$(entry_file "$(key_of "$star")")" ]
    [ "$(origin_count o1 '^o1 GET /_cache\?max_age=600&vary=\*$')" -eq 2 ]
}

@test "cache: Vary: nine variants of one URL live side by side (slots taken in turn from the hashed one); a tenth replaces one" {
    start_origin o1
    start_pibl
    local t='/_cache?max_age=600&vary=Accept-Language' l n=0
    local -a langs=(en fr es de it pt nl sv da)
    for l in "${langs[@]}"; do
        fetch "a$l" "$t" -H "Accept-Language: $l"
        [ "$(fheader "a$l" X-Cache)" = MISS ]
        n=$((n + 1))
        wait_entries "$n"
    done
    local i
    for i in "${!langs[@]}"; do
        l=${langs[$i]}
        fetch "b$l" "$t" -H "Accept-Language: $l"
        [ "$(fheader "b$l" X-Cache)" = HIT ] || { echo "$l was not kept"; return 1; }
        [ "$(fbody "b$l")" = "cache-body o1 n=$((i + 1)) vary=$l" ]
    done
    [ "$(origin_count o1 '^o1 GET /_cache')" -eq 9 ]
    # a tenth: stored in place of one of the eight slots; the URL never holds more than nine entries
    fetch c "$t" -H 'Accept-Language: fi'
    [ "$(fheader c X-Cache)" = MISS ]
    [[ "$(fheader c Cache-Status)" == *fwd=vary-miss* ]]
    fetch d "$t" -H 'Accept-Language: fi'
    [ "$(fheader d X-Cache)" = HIT ]
    [ "$(n_entries)" -eq 9 ]
}

@test "cache: Vary keys are normalised: one list over several lines, blanks around members; Accept fields by case, inner blanks and order" {
    start_origin o1
    start_pibl
    local al='/_cache?max_age=600&vary=Accept-Language' ae='/_cache?max_age=600&vary=Accept-Encoding'
    local xf='/_cache?max_age=600&vary=X-Foo'
    fetch a "$al" -H 'Accept-Language: en-US, fr;q=0.5'
    [ "$(fheader a X-Cache)" = MISS ]
    wait_entries 1
    # the same preferences spelt otherwise: q-values rank, case and blanks mean nothing
    fetch b "$al" -H 'Accept-Language: fr ; q=0.5,EN-us'
    [ "$(fheader b X-Cache)" = HIT ]
    fetch c "$al" -H 'Accept-Language: en-us' -H 'Accept-Language: FR;Q=0.5'
    [ "$(fheader c X-Cache)" = HIT ]
    # the order of the members does not count either (their q-values rank them); other values do
    fetch d "$al" -H 'Accept-Language: fr;q=0.5, en-US'
    [ "$(fheader d X-Cache)" = HIT ]
    fetch e "$al" -H 'Accept-Language: en-US, fr;q=0.6'
    [ "$(fheader e X-Cache)" = MISS ]
    wait_entries 2
    # Accept-Encoding alike
    fetch f "$ae" -H 'Accept-Encoding: gzip, br'
    [ "$(fheader f X-Cache)" = MISS ]
    wait_entries 3
    fetch g "$ae" -H 'Accept-Encoding: BR,gzip'
    [ "$(fheader g X-Cache)" = HIT ]
    fetch h "$ae" -H 'Accept-Encoding: gzip, deflate'
    [ "$(fheader h X-Cache)" = MISS ]
    # another field: its lines are one list, blanks around members do not count; case and order do
    fetch i "$xf" -H 'X-Foo: a, b'
    [ "$(fheader i X-Cache)" = MISS ]
    wait_entries 5
    fetch j "$xf" -H 'X-Foo: a' -H 'X-Foo:  b '
    [ "$(fheader j X-Cache)" = HIT ]
    fetch k "$xf" -H 'X-Foo: a,b'
    [ "$(fheader k X-Cache)" = HIT ]
    fetch l "$xf" -H 'X-Foo: b, a'
    [ "$(fheader l X-Cache)" = MISS ]
    fetch m "$xf" -H 'X-Foo: A, b'
    [ "$(fheader m X-Cache)" = MISS ]
    [ "$(origin_count o1 '^o1 GET /_cache')" -eq 7 ]
    # an absent field matches only an absent one, not an empty one (RFC 9111 4.1)
    local xb='/_cache?max_age=600&vary=X-Bar'
    fetch n "$xb"
    wait_entry "$(key_of "$xb")"
    fetch o "$xb" -H 'X-Bar;'
    [ "$(fheader o X-Cache)" = MISS ]
    fetch p "$xb"
    [ "$(fheader p X-Cache)" = HIT ]
}

@test "cache: Expires sets the lifetime (capped by the launch TTL, max-age wins); an invalid Expires (0) is stored only with a validator and revalidated each time" {
    start_origin o1
    PIBL_TTL=60
    start_pibl
    local long='/_cache?expires=100' short='/_cache?expires=5' t lt
    fetch a "$long"
    [ -n "$(fheader a Expires)" ]
    [ -n "$(fheader a Date)" ]
    run ! fhas a Cache-Control
    wait_entry "$(key_of "$long")"
    echo "lifetime of $long: $(entry_lifetime "$(key_of "$long")")"
    [ "$(entry_lifetime "$(key_of "$long")")" -eq 60 ]
    fetch b "$long"
    [ "$(fheader b X-Cache)" = HIT ]
    [ "$(fbody b)" = "cache-body o1 n=1" ]

    # Expires - Date = 5 (4 when the origin's clock ticked between the two fields)
    fetch c "$short"
    wait_entry "$(key_of "$short")"
    lt=$(entry_lifetime "$(key_of "$short")")
    echo "lifetime of $short: $lt"
    [ "$lt" -ge 4 ]
    [ "$lt" -le 5 ]
    age_entry "$(key_of "$short")" '-10 seconds'
    fetch d "$short"
    [ "$(fheader d X-Cache)" = EXPIRED ]
    [ "$(fbody d)" = "cache-body o1 n=3" ]

    # "Expires: 0" is an invalid date = already expired (RFC 9111 5.3); no validator: never stored
    for t in '/_cache?expires=0' '/_cache?expires=bad'; do
        fetch e "$t"
        [ "$(fstatus e)" = 200 ]
        [ "$(fheader e Expires)" = 0 ]
        fetch f "$t"
        [ "$(fstatus f)" = 200 ]
        [ "$(fheader f X-Cache)" = MISS ]
        wait_logged GET "$t" 2
        [ "$(cache_seq GET "$t")" = "MISS MISS" ]
        [ -z "$(entry_file "$(key_of "$t")")" ]
    done
    [ "$(origin_count o1 '^o1 GET /_cache\?expires=(0|bad)$')" -eq 4 ]

    # with an ETag: stored with lifetime 0, every reuse asks the origin with If-None-Match; its 304 serves
    # the stored body
    t='/_cache?expires=0&etag=x'
    fetch g "$t"
    [ "$(fbody g)" = "cache-body o1 n=8" ]
    wait_entry "$(key_of "$t")"
    [ "$(entry_lifetime "$(key_of "$t")")" -eq 0 ]
    fetch h "$t"
    [ "$(fstatus h)" = 200 ]
    [ "$(fheader h X-Cache)" = EXPIRED ]
    [ "$(fbody h)" = "cache-body o1 n=8" ]
    fetch i "$t"
    [ "$(fstatus i)" = 200 ]
    [ "$(fheader i X-Cache)" = EXPIRED ]
    [ "$(fbody i)" = "cache-body o1 n=8" ]
    [ "$(origin_count o1 '^o1 GET /_cache\?expires=0&etag=x$')" -eq 3 ]
    [ "$(tr -d '\r' <"$(origin_heads o1)" | grep -Eic '^If-None-Match: *"x"$')" -eq 2 ]

    # max-age wins over Expires (RFC 9111 5.3)
    t='/_cache?max_age=30&expires=0'
    fetch j "$t"
    [ "$(fheader j Expires)" = 0 ]
    wait_entry "$(key_of "$t")"
    [ "$(entry_lifetime "$(key_of "$t")")" -eq 30 ]
    fetch k "$t"
    [ "$(fheader k X-Cache)" = HIT ]
    [ "$(fbody k)" = "$(fbody j)" ]
}

@test "cache: max-age=0 and Last-Modified as the only validator: stored, revalidated with If-Modified-Since, the 304 serves the stored body" {
    start_origin o1
    start_pibl 'cache_heuristic = off'
    local t='/_cache?lm=1&max_age=0' key lm
    key=$(key_of "$t")
    fetch a "$t"
    [ "$(fstatus a)" = 200 ]
    [ "$(fheader a X-Cache)" = MISS ]
    lm=$(fheader a Last-Modified)
    [ -n "$lm" ]
    run ! fhas a ETag
    [ "$(fheader a Cache-Control)" = max-age=0 ]
    [ "$(fbody a)" = "cache-body o1 n=1" ]
    wait_entry "$key"
    [ "$(entry_lifetime "$key")" -eq 0 ]

    fetch b "$t"
    [ "$(fstatus b)" = 200 ]
    [ "$(fheader b X-Cache)" = EXPIRED ]
    [[ "$(fheader b Age)" =~ ^[0-9]+$ ]]
    [ "$(fbody b)" = "cache-body o1 n=1" ]
    fetch c "$t"
    [ "$(fheader c X-Cache)" = EXPIRED ]
    [ "$(fbody c)" = "cache-body o1 n=1" ]
    [ "$(origin_count o1 '^o1 GET /_cache\?lm=1&max_age=0$')" -eq 3 ]
    # the two reuses asked with the stored Last-Modified, and only with it
    tr -d '\r' <"$(origin_heads o1)" >"$BATS_TEST_TMPDIR/heads.txt"
    cat "$BATS_TEST_TMPDIR/heads.txt"
    [ "$(grep -cixF "If-Modified-Since: $lm" "$BATS_TEST_TMPDIR/heads.txt")" -eq 2 ]
    run ! grep -qi '^If-None-Match:' "$BATS_TEST_TMPDIR/heads.txt"
    wait_logged GET "$t" 3
    [ "$(cache_seq GET "$t")" = "MISS EXPIRED EXPIRED" ]
}

@test "cache: cache_heuristic = off gives an answer with only Last-Modified 10 % of its age (RFC 9111 4.2.2), at most the TTL" {
    start_origin o1
    PIBL_TTL=100000
    start_pibl 'cache_heuristic = off'
    local t='/_cache?lm=1' key life
    key=$(key_of "$t")
    fetch a "$t"
    [ "$(fheader a X-Cache)" = MISS ]
    run ! fhas a Cache-Control
    wait_entry "$key"
    life=$(entry_lifetime "$key")
    # the origin's Last-Modified is a day before it started: a tenth of that
    [ "$life" -ge 8640 ]
    [ "$life" -le 8700 ]
    fetch b "$t"
    [ "$(fheader b X-Cache)" = HIT ]
    stop_pid "$PIBL_PID" >/dev/null
    rm -rf "${CACHE_DIR:?}"/*
    PIBL_TTL=60
    restart_pibl 'cache_heuristic = off'
    key=$(key_of "$t")
    fetch c "$t"
    wait_entry "$key"
    [ "$(entry_lifetime "$key")" -eq 60 ]
    # without Last-Modified nor explicit freshness: revalidated each time, so not kept without a validator
    fetch d '/_cache?x=1'
    fetch e '/_cache?x=1'
    [ "$(fheader e X-Cache)" = MISS ]
}

# ---------------------------------------------------------------- invalidation

@test "cache: a successful POST, PUT or DELETE invalidates the entry of its target; a failed one does not" {
    start_origin o1
    start_pibl
    local t='/_cache?max_age=600' key m n=1
    key=$(key_of "$t")
    fetch a "$t"
    [ "$(fbody a)" = "cache-body o1 n=1" ]
    wait_entry "$key"
    for m in POST PUT DELETE; do
        fetch b "$t" -X "$m" -d 'x=1'
        [ "$(fstatus b)" = 200 ]
        [ "$(fheader b X-Cache)" = BYPASS ]
        n=$((n + 1))
        wait_no_entry "$key"
        fetch c "$t"
        [ "$(fheader c X-Cache)" = MISS ]
        n=$((n + 1))
        [ "$(fbody c)" = "cache-body o1 n=$n" ]
        [ "$(origin_count o1 "^o1 $m /_cache")" -eq 1 ]
        # the new answer is stored again: the next round starts from a cached entry
        wait_entry "$key"
        fetch d "$t"
        [ "$(fheader d X-Cache)" = HIT ]
        [ "$(fbody d)" = "cache-body o1 n=$n" ]
    done
    [ "$(origin_count o1 '^o1 GET /_cache')" -eq 4 ]

    # 404 is storable; a POST answered 404 leaves the entry alone
    fetch e '/_status/404'
    [ "$(fstatus e)" = 404 ]
    wait_entry "$(key_of '/_status/404')"
    fetch f '/_status/404' -d 'x=1'
    [ "$(fstatus f)" = 404 ]
    wait_logged POST '/_status/404' 1
    fetch g '/_status/404'
    [ "$(fstatus g)" = 404 ]
    [ "$(fheader g X-Cache)" = HIT ]
    [ "$(origin_count o1 '^o1 GET /_status/404$')" -eq 1 ]
}

# ---------------------------------------------------------------- conditional requests

@test "cache: a HIT answers the client's If-None-Match and If-Modified-Since with 304" {
    start_origin o1
    start_pibl
    local t='/_cache?max_age=600&etag=v1' lm
    fetch a "$t"
    wait_entry "$(key_of "$t")"
    fetch b "$t" -H 'If-None-Match: "v1"'
    [ "$(fstatus b)" = 304 ]
    [ "$(fheader b X-Cache)" = HIT ]
    [ ! -s "$BATS_TEST_TMPDIR/b.body" ]
    fetch c "$t" -H 'If-None-Match: "other"'
    [ "$(fstatus c)" = 200 ]
    [ "$(fheader c X-Cache)" = HIT ]
    [ "$(fbody c)" = "cache-body o1 n=1" ]
    [ "$(origin_count o1 '^o1 GET /_cache')" -eq 1 ]

    # a static file carries Last-Modified
    fetch d /hello.txt
    lm=$(fheader d Last-Modified)
    [ -n "$lm" ]
    wait_entry "$(key_of /hello.txt)"
    fetch e /hello.txt -H "If-Modified-Since: $lm"
    [ "$(fstatus e)" = 304 ]
    [ "$(fheader e X-Cache)" = HIT ]
    [ ! -s "$BATS_TEST_TMPDIR/e.body" ]
    [ "$(origin_count o1 '^o1 GET /hello\.txt$')" -eq 1 ]
}

# ---------------------------------------------------------------- big entries, crashes, corruption

@test "cache: a 100 MB entry is served intact on the second (HIT) request" {
    start_origin o1
    start_pibl
    local t='/_bytes?size=104857600' want
    want=$(digits 104857600 | sha256sum | cut -d' ' -f1)
    fetch a "$t"
    [ "$(fstatus a)" = 200 ]
    [ "$(fheader a X-Cache)" = MISS ]
    [ "$(sha "$BATS_TEST_TMPDIR/a.body")" = "$want" ]
    wait_entry "$(key_of "$t")" 20
    fetch b "$t"
    [ "$(fstatus b)" = 200 ]
    [ "$(fheader b X-Cache)" = HIT ]
    [ "$(fheader b Content-Length)" = 104857600 ]
    [ "$(stat -c %s "$BATS_TEST_TMPDIR/b.body")" -eq 104857600 ]
    [ "$(sha "$BATS_TEST_TMPDIR/b.body")" = "$want" ]
    [ "$(origin_count o1 '^o1 GET /_bytes')" -eq 1 ]
}

@test "cache: kill -9 while a 200 MB entry is being written: no .tmp-* after restart, next answer is complete" {
    start_origin o1
    start_pibl
    local t='/_bytes?size=209715200' cpid f
    curl -sS --max-time 60 --limit-rate 2M -H 'Host: crash.test' -o "$BATS_TEST_TMPDIR/slow.body" \
        "$(url "$t")" 2>/dev/null 3>&- &
    cpid=$!
    track_pid "$cpid"
    wait_tmp_file 10
    kill -KILL "$PIBL_PID"
    wait_pid_exit "$PIBL_PID" 5
    wait "$PIBL_PID" 2>/dev/null || true
    untrack_pid "$PIBL_PID"
    stop_pid "$cpid" >/dev/null
    echo "after kill: $(tmp_files | paste -sd' ' -)"
    [ -n "$(tmp_files)" ]
    : >"$CACHE_DIR/.tmp-left-by-a-test"
    # nothing partial was published under the entry's name
    f=$(entry_file "$(key_of "$t" crash.test)")
    [ -z "$f" ]

    restart_pibl
    echo "after restart: $(tmp_files | paste -sd' ' -)"
    [ -z "$(tmp_files)" ]
    fetch b "$t" -H 'Host: crash.test'
    [ "$(fstatus b)" = 200 ]
    [[ "$(fheader b X-Cache)" =~ ^(MISS|HIT)$ ]]
    [ "$(stat -c %s "$BATS_TEST_TMPDIR/b.body")" -eq 209715200 ]
    cmp <(digits 209715200) "$BATS_TEST_TMPDIR/b.body"
}

@test "cache: a corrupted (truncated) entry is not served: MISS with the full body, then a good entry" {
    start_origin o1
    start_pibl
    local t='/_cache?max_age=600' key f
    key=$(key_of "$t")
    fetch a "$t"
    wait_entry "$key"
    f=$(entry_file "$key")
    truncate -s -10 "$f"

    fetch b "$t"
    [ "$(fstatus b)" = 200 ]
    [ "$(fheader b X-Cache)" = MISS ]
    [ "$(fheader b Content-Length)" = 18 ]
    [ "$(fbody b)" = "cache-body o1 n=2" ]
    [ "$(origin_count o1 '^o1 GET /_cache')" -eq 2 ]
    wait_entry "$key"
    fetch c "$t"
    [ "$(fheader c X-Cache)" = HIT ]
    [ "$(fbody c)" = "cache-body o1 n=2" ]
}

@test "cache: an open entry changed on disk is never served as it was: rewritten in place, replaced by rename, removed, renamed away, its folder renamed" {
    start_origin o1
    start_pibl
    local t='/_cache?max_age=600' key f tmp i seen=""
    key=$(key_of "$t")
    fetch a "$t"
    wait_entry "$key"
    f=$(entry_file "$key")
    fetch b "$t"
    [ "$(fheader b X-Cache)" = HIT ]        # the entry is open in PIBL now

    # the body's bytes rewritten in place (same inode, same size)
    printf 'cache-body XX n=1' | dd of="$f" bs=1 seek=$(($(stat -c %s "$f") - 18)) conv=notrunc status=none
    fetch c "$t"
    [ "$(fheader c X-Cache)" = HIT ]
    [ "$(fbody c)" = "cache-body XX n=1" ]

    # another file renamed over it (what a new store does)
    tmp=$CACHE_DIR/new-copy
    sed 's/cache-body XX n=1/cache-body YY n=1/' "$f" > "$tmp"
    mv "$tmp" "$f"
    fetch d "$t"
    [ "$(fheader d X-Cache)" = HIT ]
    [ "$(fbody d)" = "cache-body YY n=1" ]

    # removed: fetched again
    rm "$f"
    fetch e "$t"
    [ "$(fheader e X-Cache)" = MISS ]
    [ "$(fbody e)" = "cache-body o1 n=2" ]
    wait_entry "$key"
    fetch f1 "$t"
    [ "$(fheader f1 X-Cache)" = HIT ]

    # renamed away within its folder: fetched again
    mv "$f" "$f.away"
    fetch g "$t"
    [ "$(fheader g X-Cache)" = MISS ]
    [ "$(fbody g)" = "cache-body o1 n=3" ]
    wait_entry "$key"
    rm -f "$f.away"
    fetch h "$t"
    [ "$(fheader h X-Cache)" = HIT ]

    # its folder renamed (the file's inode untouched): noticed within a second
    mv "$(dirname "$f")" "$CACHE_DIR/moved"
    for ((i = 0; i < 30; i++)); do
        fetch i "$t"
        if [ "$(fheader i X-Cache)" = MISS ]; then
            seen=$(fbody i)
            break
        fi
        sleep 0.1
    done
    echo "after the folder rename: ${i} tries, body '$seen'"
    [ "$seen" = "cache-body o1 n=4" ]
    [ "$i" -le 15 ]
    [ "$(origin_count o1 '^o1 GET /_cache')" -eq 4 ]
}

@test "cache: an answer larger than cache_max_object is relayed whole but not stored (nor said to be); a reload changes the limit" {
    start_origin o1
    start_pibl 'cache_max_object = 1000'
    fetch a '/_bytes?size=5000'
    # its Content-Length says it is too big: Cache-Status does not say stored (RFC 9211 2.7)
    [[ "$(fheader a Cache-Status)" != *stored* ]]
    fetch b '/_bytes?size=5000'
    [ "$(fstatus b)" = 200 ]
    [ "$(fheader b X-Cache)" = MISS ]
    cmp <(digits 5000) "$BATS_TEST_TMPDIR/b.body"
    [ "$(origin_count o1 '^o1 GET /_bytes\?size=5000$')" -eq 2 ]
    [ -z "$(entry_file "$(key_of '/_bytes?size=5000')")" ]
    # control: a small one is stored
    fetch c '/_bytes?size=500'
    wait_entry "$(key_of '/_bytes?size=500')"
    fetch d '/_bytes?size=500'
    [ "$(fheader d X-Cache)" = HIT ]
    cmp <(digits 500) "$BATS_TEST_TMPDIR/d.body"
    # SIGHUP with a smaller limit: the next answers of 500 bytes are not stored
    write_pibl_config "$PIBL_CFG" 'cache_max_object = 100'
    kill -HUP "$PIBL_PID"
    wait_for_line "$PIBL_LOG" '^pibl: reloaded ' "$HELPER_WAIT_SECS"
    fetch e '/_bytes?size=501'
    [[ "$(fheader e Cache-Status)" != *stored* ]]
    fetch f '/_bytes?size=501'
    [ "$(fheader f X-Cache)" = MISS ]
    [ -z "$(entry_file "$(key_of '/_bytes?size=501')")" ]
}

@test "cache: cache_max_bytes bounds the folder (entries are evicted)" {
    start_origin o1
    start_pibl 'cache_max_bytes = 6000'
    local i n=99
    for ((i = 1; i <= 10; i++)); do
        fetch "a$i" "/_bytes?size=1000&i=$i" >/dev/null
        [ "$(fstatus "a$i")" = 200 ]
        wait_logged GET "/_bytes?size=1000&i=$i" 1
    done
    # eviction may run off the request path: wait (bounded) until at most 6 entries of >= 1000 bytes remain
    for ((i = 0; i < 200; i++)); do
        n=$(n_entries)
        [ "$n" -le 6 ] && break
        sleep 0.05
    done
    echo "entries left: $n"
    [ "$n" -le 6 ]
    [ "$n" -ge 1 ]
}

@test "cache: a store that fails at run time (the entry's folder is a file): answer served whole, no temp file left, warning logged" {
    start_origin o1
    start_pibl
    local t='/_bytes?size=300000' h i
    h=$(fnv1a64 "$(key_of "$t")")
    mkdir -p "$CACHE_DIR"
    # whichever two hex digits name the folder, they are taken by a regular file (chmod would not stop root)
    printf 'blocker\n' >"$CACHE_DIR/${h:0:2}"
    [ -e "$CACHE_DIR/${h:14:2}" ] || printf 'blocker\n' >"$CACHE_DIR/${h:14:2}"
    fetch a "$t"
    [ "$(fstatus a)" = 200 ]
    cmp <(digits 300000) "$BATS_TEST_TMPDIR/a.body"
    wait_logged GET "$t" 1
    for ((i = 0; i < 100; i++)); do
        [ -z "$(tmp_files)" ] && break
        sleep 0.05
    done
    [ -z "$(tmp_files)" ]
    grep -Eiq 'warn' "$PIBL_LOG"
    fetch b "$t"
    [ "$(fstatus b)" = 200 ]
    [ "$(fheader b X-Cache)" != HIT ]
    cmp <(digits 300000) "$BATS_TEST_TMPDIR/b.body"
    [ "$(origin_count o1 '^o1 GET /_bytes')" -eq 2 ]
}

@test "cache: ENOSPC while storing (cache_dir on a 256 KB tmpfs): a 1 MB answer is served whole, not stored, no temp file left, warning logged; small answers are still stored" {
    tmpfs_namespace_ok "$BATS_TEST_TMPDIR/probe" ||
        skip "cannot mount a tmpfs in a private mount namespace here (needs root: unshare -m, mount -t tmpfs)"
    start_origin o1
    local tiny="$BATS_TEST_TMPDIR/tinycache" big='/_bytes?size=1048576' small='/_cache?max_age=600' want i
    make_tmpfs_pibl "$BATS_TEST_TMPDIR/pibl-tmpfs" "$tiny" 256k
    PIBL_BIN="$BATS_TEST_TMPDIR/pibl-tmpfs" start_pibl "cache_dir = tinycache"
    # the tmpfs exists only in pibl's mount namespace: look at it through /proc/PID/root
    CACHE_DIR="/proc/$PIBL_PID/root$tiny"
    grep -q " $tiny tmpfs " "/proc/$PIBL_PID/mounts"
    run ! grep -q " $tiny " /proc/self/mounts
    [ -d "$CACHE_DIR" ]

    want=$(digits 1048576 | sha256sum | cut -d' ' -f1)
    fetch a "$big"
    [ "$(fstatus a)" = 200 ]
    [ "$(fheader a X-Cache)" = MISS ]
    [ "$(stat -c %s "$BATS_TEST_TMPDIR/a.body")" -eq 1048576 ]
    [ "$(sha "$BATS_TEST_TMPDIR/a.body")" = "$want" ]
    wait_logged GET "$big" 1
    for ((i = 0; i < 100; i++)); do
        [ -z "$(tmp_files)" ] && break
        sleep 0.05
    done
    echo "tmpfs after the big answer: $(find "$CACHE_DIR" | paste -sd' ' -)"
    [ -z "$(tmp_files)" ]
    [ "$(n_entries)" -eq 0 ]
    grep -Ei 'warn' "$PIBL_LOG"
    grep -Eiq 'warn.*(no space|enospc)' "$PIBL_LOG"

    # the space was given back: a second big fetch is relayed whole again, a small answer is stored
    fetch b "$big"
    [ "$(fstatus b)" = 200 ]
    [ "$(fheader b X-Cache)" = MISS ]
    [ "$(sha "$BATS_TEST_TMPDIR/b.body")" = "$want" ]
    [ "$(origin_count o1 '^o1 GET /_bytes')" -eq 2 ]
    fetch c "$small"
    [ "$(fbody c)" = "cache-body o1 n=1" ]
    wait_entry "$(key_of "$small")"
    fetch d "$small"
    [ "$(fheader d X-Cache)" = HIT ]
    [ "$(fbody d)" = "cache-body o1 n=1" ]
    [ -z "$(tmp_files)" ]
}

# ---------------------------------------------------------------- concurrency

@test "cache: 50 concurrent misses for one key reach the origin once; the others are served the new entry" {
    start_origin o1
    start_pibl
    local t='/_slow?ms=500' i pids=() n_miss=0 n_hit=0 x
    for ((i = 1; i <= 50; i++)); do
        fetch "c$i" "$t" >/dev/null 2>&1 3>&- &
        pids+=($!)
        track_pid $!
    done
    for i in "${pids[@]}"; do
        wait "$i" || true
        untrack_pid "$i"
    done
    for ((i = 1; i <= 50; i++)); do
        [ "$(fstatus "c$i")" = 200 ] || { echo "c$i: $(cat "$BATS_TEST_TMPDIR/c$i.head")"; return 1; }
        [ "$(fbody "c$i")" = slow ] || { echo "c$i body: $(fbody "c$i")"; return 1; }
        x=$(fheader "c$i" X-Cache)
        [ "$x" = MISS ] && n_miss=$((n_miss + 1))
        [ "$x" = HIT ] && n_hit=$((n_hit + 1))
    done
    echo "origin requests: $(origin_count o1 '^o1 GET /_slow'), MISS $n_miss, HIT $n_hit"
    [ "$(origin_count o1 '^o1 GET /_slow')" -eq 1 ]
    [ "$n_miss" -eq 1 ]
    [ "$n_hit" -eq 49 ]
}

@test "cache: requests that wait on a collapsed miss past cache_lock_timeout still get a full answer" {
    start_origin o1
    start_pibl 'cache_lock_timeout = 1'
    local t='/_slow?ms=2500' i pids=()
    for ((i = 1; i <= 3; i++)); do
        fetch "w$i" "$t" >/dev/null 2>&1 3>&- &
        pids+=($!)
        track_pid $!
    done
    for i in "${pids[@]}"; do
        wait "$i" || true
        untrack_pid "$i"
    done
    for ((i = 1; i <= 3; i++)); do
        cat "$BATS_TEST_TMPDIR/w$i.head"
        [ "$(fstatus "w$i")" = 200 ]
        [ "$(fbody "w$i")" = slow ]
    done
    [ "$(origin_count o1 '^o1 GET /_slow')" -ge 1 ]
    [ "$(origin_count o1 '^o1 GET /_slow')" -le 3 ]
}

# ---------------------------------------------------------------- PURGE

@test "cache: PURGE from loopback removes the entry (200), the next GET is a MISS; PURGE of an absent entry is 404" {
    start_origin o1
    start_pibl
    local t='/_cache?max_age=600' key
    key=$(key_of "$t")
    fetch a "$t"
    wait_entry "$key"
    fetch p "$t" -X PURGE
    [ "$(fstatus p)" = 200 ]
    [ -z "$(entry_file "$key")" ]
    fetch b "$t"
    [ "$(fheader b X-Cache)" = MISS ]
    [ "$(fbody b)" = "cache-body o1 n=2" ]
    fetch q '/_cache?max_age=600&never=1' -X PURGE
    [ "$(fstatus q)" = 404 ]
    [ "$(origin_count o1 '^o1 PURGE ')" -eq 0 ]
}

@test "cache: PURGE from an address not in purge_allow is 403 and keeps the entry" {
    start_origin o1
    start_pibl 'purge_allow = 10.9.9.9'
    local t='/_cache?max_age=600' key
    key=$(key_of "$t")
    fetch a "$t"
    wait_entry "$key"
    fetch p "$t" -X PURGE
    [ "$(fstatus p)" = 403 ]
    [ -n "$(entry_file "$key")" ]
    fetch b "$t"
    [ "$(fheader b X-Cache)" = HIT ]
    [ "$(fbody b)" = "cache-body o1 n=1" ]
    [ "$(origin_count o1 '^o1 PURGE ')" -eq 0 ]
}

@test "cache: purge_allow takes address ranges: 127.0.0.0/8 lets 127.0.0.1 purge, 10.0.0.0/8 and 127.0.0.2/32 do not; a member that is no address stops the start" {
    start_origin o1
    local t='/_cache?max_age=600' key
    key=$(key_of "$t" purge.test)
    start_pibl 'purge_allow = 10.0.0.0/8, 127.0.0.2/32 ::1/128'
    fetch a "$t" -H 'Host: purge.test'
    wait_entry "$key"
    fetch p "$t" -X PURGE -H 'Host: purge.test'
    [ "$(fstatus p)" = 403 ]
    [ -n "$(entry_file "$key")" ]
    stop_pid "$PIBL_PID" >/dev/null
    restart_pibl 'purge_allow = 10.0.0.0/8 127.0.0.0/8'
    fetch q "$t" -X PURGE -H 'Host: purge.test'
    [ "$(fstatus q)" = 200 ]
    [ -z "$(entry_file "$key")" ]
    # -t and the start-up name the bad member with its file and line
    printf 'backend = 127.0.0.1:1\npurge_allow = 127.0.0.1 localhost\n' >"$BATS_TEST_TMPDIR/bad.cfg"
    run "$PIBL_BIN" -t "$BATS_TEST_TMPDIR/bad.cfg"
    echo "$output"
    [ "$status" -ne 0 ]
    [[ "$output" == *"bad.cfg:2: purge_allow: \"localhost\" is not an IP address"* ]]
    printf 'backend = 127.0.0.1:1\nadmin_allow = 10.0.0.0/33\n' >"$BATS_TEST_TMPDIR/bad.cfg"
    run "$PIBL_BIN" -t "$BATS_TEST_TMPDIR/bad.cfg"
    echo "$output"
    [ "$status" -ne 0 ]
    [[ "$output" == *"bad.cfg:2: admin_allow: \"10.0.0.0/33\" is not an IP address"* ]]
}

# ---------------------------------------------------------------- stale-if-error

@test "cache: an expired entry is served STALE when every backend fails, within cache_stale_if_error only" {
    start_origin o1
    start_origin o2
    start_pibl 'cache_stale_if_error = 120'
    local t='/_cache?max_age=600' key
    key=$(key_of "$t")
    fetch a "$t"
    wait_entry "$key"
    stop_origin o1
    stop_origin o2

    # expired 60 s ago (600 s lifetime): within the 120 s allowance
    age_entry "$key" '-660 seconds'
    fetch b "$t"
    [ "$(fstatus b)" = 200 ]
    [ "$(fheader b X-Cache)" = STALE ]
    [[ "$(fheader b Age)" =~ ^[0-9]+$ ]]
    [ "$(fheader b Age)" -ge 660 ]
    # RFC 9211: a negative ttl once past its freshness, and why it was served anyway.
    [[ "$(fheader b Cache-Status)" =~ ^pibl\;\ hit\;\ ttl=-(60|61|62)\;\ detail=stale-if-error$ ]]
    [ "$(fbody b)" = "cache-body o1 n=1" ]
    wait_logged GET "$t" 2
    [ "$(cache_seq GET "$t")" = "MISS STALE" ]

    # expired 180 s ago: past the allowance
    age_entry "$key" '-780 seconds'
    fetch c "$t"
    [[ "$(fstatus c)" =~ ^50[23]$ ]]
    [[ "$(fheader c X-Cache)" != STALE ]]
    [[ "$(fbody c)" != "cache-body"* ]]
}

# ---------------------------------------------------------------- cache off, unusable folder

@test "cache: TTL 0 turns the cache off: no cache folder writes, no X-Cache, log cache=-" {
    start_origin o1
    PIBL_TTL=0
    start_pibl
    local t='/_cache?max_age=600'
    fetch a "$t"
    fetch b "$t"
    [ "$(fstatus b)" = 200 ]
    [ "$(fbody b)" = "cache-body o1 n=2" ]
    run ! fhas a X-Cache
    run ! fhas b X-Cache
    [ "$(origin_count o1 '^o1 GET /_cache')" -eq 2 ]
    wait_logged GET "$t" 2
    [ "$(cache_seq GET "$t")" = "- -" ]
    [ ! -e "$CACHE_DIR" ]
}

@test "cache: a cache_dir that is a regular file: answers still served 200, warning in the log" {
    start_origin o1
    printf 'not a folder\n' >"$BATS_TEST_TMPDIR/plainfile"
    start_pibl 'cache_dir = plainfile'
    local t='/_cache?max_age=600'
    fetch a "$t"
    [ "$(fstatus a)" = 200 ]
    [ "$(fbody a)" = "cache-body o1 n=1" ]
    fetch b "$t"
    [ "$(fstatus b)" = 200 ]
    [ "$(fbody b)" = "cache-body o1 n=2" ]
    wait_logged GET "$t" 2
    grep -Eiq 'warn' "$PIBL_LOG"
    [ "$(cat "$BATS_TEST_TMPDIR/plainfile")" = 'not a folder' ]
}

@test "cache: a cache_dir under a regular file: answers still served 200, warning in the log" {
    start_origin o1
    printf 'not a folder\n' >"$BATS_TEST_TMPDIR/plainfile"
    start_pibl 'cache_dir = plainfile/cache'
    local t='/_cache?max_age=600'
    fetch a "$t"
    [ "$(fstatus a)" = 200 ]
    [ "$(fbody a)" = "cache-body o1 n=1" ]
    fetch b "$t"
    [ "$(fstatus b)" = 200 ]
    [ "$(fbody b)" = "cache-body o1 n=2" ]
    wait_logged GET "$t" 2
    grep -Eiq 'warn' "$PIBL_LOG"
    [ "$(cat "$BATS_TEST_TMPDIR/plainfile")" = 'not a folder' ]
}

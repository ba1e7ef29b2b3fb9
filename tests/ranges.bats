#!/usr/bin/env bats
# ranges.bats - Range requests answered from the cache (RFC 9110 14): one range (a-b, a-, -n) of a fresh stored
# 200 is a 206 with Content-Range, sent from the entry's file at an offset (sendfile) or from its in-memory copy,
# on the event loop and on the blocking path (log_headers = on); a range past the end is a 416 with
# Content-Range: bytes */LEN; several ranges, a malformed field or another unit get the whole 200; If-Range with a
# strong ETag or the stored Last-Modified decides between 206 and 200; HEAD and other methods ignore Range;
# Accept-Ranges: bytes on what the cache serves; a miss forwards the Range to the origin; `curl -C -` resumes a
# download through PIBL into a byte-identical file.

bats_require_minimum_version 1.5.0
load helpers
load cache_helpers

setup() { cache_setup; }
teardown() { helpers_teardown; }

# stored PATH: fetch PATH once (a miss that stores it) and wait until its entry is on disk.
stored() {
    fetch warm "$1"
    [ "$(fstatus warm)" = 200 ]
    wait_entry "$(key_of "$1")"
}

# part TAG FROM LEN: TAG's body is bytes FROM..FROM+LEN-1 of the digits /_bytes sends.
part() {
    cmp -s "$BATS_TEST_TMPDIR/$1.body" <(digits $(($2 + $3)) | tail -c "$3")
}

@test "ranges: a-b, a- and -n of a stored 256 KB answer are 206 with Content-Range, byte-exact, from the file" {
    start_origin o1
    start_pibl
    local t='/_bytes?size=262144' len=262144
    stored "$t"
    fetch a "$t" -r 0-9
    [ "$(fstatus a)" = 206 ]
    [ "$(fheader a Content-Range)" = "bytes 0-9/$len" ]
    [ "$(fheader a Content-Length)" = 10 ]
    [ "$(fbody a)" = 0123456789 ]
    [ "$(fheader a X-Cache)" = HIT ]
    fetch b "$t" -r 100000-199999
    [ "$(fstatus b)" = 206 ]
    [ "$(fheader b Content-Range)" = "bytes 100000-199999/$len" ]
    part b 100000 100000
    fetch c "$t" -r 262000-
    [ "$(fheader c Content-Range)" = "bytes 262000-262143/$len" ]
    part c 262000 144
    fetch d "$t" -H 'Range: bytes=-7'
    [ "$(fheader d Content-Range)" = "bytes 262137-262143/$len" ]
    part d 262137 7
    # A last byte past the end is cut to the end; a suffix longer than the body is the whole body.
    fetch e "$t" -r 262140-999999
    [ "$(fheader e Content-Range)" = "bytes 262140-262143/$len" ]
    fetch f "$t" -H 'Range: bytes=-999999'
    [ "$(fheader f Content-Range)" = "bytes 0-262143/$len" ]
    [ "$(stat -c %s "$BATS_TEST_TMPDIR/f.body")" -eq $len ]
    # So is a last byte too long for any integer (RFC 9110 14.1.2: at or past the end means to the end).
    fetch g "$t" -H 'Range: bytes=262000-99999999999999999999999'
    [ "$(fstatus g)" = 206 ]
    [ "$(fheader g Content-Range)" = "bytes 262000-262143/$len" ]
    part g 262000 144
    # Only the first miss went to the origin.
    [ "$(origin_count o1 '^o1 GET /_bytes')" -eq 1 ]
    wait_logged GET "$t" 8
    grep -q '"GET /_bytes?size=262144 HTTP/1.1" .* status=206 bytes=100000 .* cache=HIT' "$PIBL_LOG"
}

@test "ranges: a small entry kept in memory and the blocking path (log_headers) serve the same ranges" {
    start_origin o1
    start_pibl "log_headers = on"       # every exchange on the blocking threads
    stored '/_bytes?size=3000'
    fetch a '/_bytes?size=3000' -r 1000-1009
    [ "$(fstatus a)" = 206 ]
    [ "$(fheader a Content-Range)" = "bytes 1000-1009/3000" ]
    part a 1000 10
    stored '/_bytes?size=300000'
    fetch d '/_bytes?size=300000' -r 123456-223455     # sendfile from an offset, blocking
    [ "$(fstatus d)" = 206 ]
    part d 123456 100000
    # The event loop's in-memory copy (a new proxy, so a new cache key: its port).
    stop_pid "$PIBL_PID" >/dev/null
    start_pibl
    stored '/_bytes?size=3000'
    fetch b '/_bytes?size=3000' -r 2995-
    [ "$(fstatus b)" = 206 ]
    part b 2995 5
    grep -q 'response from cache:' <(cat "$PIBL_LOG"*)   # the first proxy did log its heads
}

@test "ranges: past the end is 416 with bytes */LEN; several, malformed or other units give the whole 200" {
    start_origin o1
    start_pibl
    local t='/_bytes?size=1000'
    stored "$t"
    fetch a "$t" -r 1000-2000
    [ "$(fstatus a)" = 416 ]
    [ "$(fheader a Content-Range)" = 'bytes */1000' ]
    [ "$(fheader a Content-Length)" = 0 ]
    run ! fhas a Content-Type
    fetch b "$t" -H 'Range: bytes=-0'
    [ "$(fstatus b)" = 416 ]
    local r
    for r in 'bytes=0-1,5-6' 'bytes=5-2' 'bytes=x-3' 'items=0-5' 'bytes=' 'bytes=1--2'; do
        fetch c "$t" -H "Range: $r"
        [ "$(fstatus c)" = 200 ]
        [ "$(stat -c %s "$BATS_TEST_TMPDIR/c.body")" -eq 1000 ]
        run ! fhas c Content-Range
    done
    # Two Range fields: ignored as well.
    fetch d "$t" -H 'Range: bytes=0-1' -H 'Range: bytes=2-3'
    [ "$(fstatus d)" = 200 ]
    # The unit is case-insensitive, blanks around the range are allowed.
    fetch e "$t" -H 'Range: Bytes= 10-19 '
    [ "$(fstatus e)" = 206 ]
    part e 10 10
}

@test "ranges: If-Range with the strong ETag or the Last-Modified date gives 206; anything else the whole 200" {
    start_origin o1
    start_pibl
    local t='/_cache?max_age=600&etag=v1&lm=1' lm
    stored "$t"
    lm=$(fheader warm Last-Modified)
    [ -n "$lm" ]
    fetch a "$t" -r 0-3 -H 'If-Range: "v1"'
    [ "$(fstatus a)" = 206 ]
    [ "$(fbody a)" = cach ]
    fetch b "$t" -r 0-3 -H 'If-Range: "v2"'
    [ "$(fstatus b)" = 200 ]
    [[ "$(fbody b)" == cache-body* ]]
    fetch c "$t" -r 0-3 -H 'If-Range: W/"v1"'            # weak: never for If-Range
    [ "$(fstatus c)" = 200 ]
    fetch d "$t" -r 0-3 -H "If-Range: $lm"
    [ "$(fstatus d)" = 206 ]
    fetch e "$t" -r 0-3 -H 'If-Range: Tue, 01 Jan 2019 00:00:00 GMT'
    [ "$(fstatus e)" = 200 ]
    # A date whose text starts with W (Wednesday) is a date, not a weak tag.
    t='/_cache?max_age=600&lm=wed'
    stored "$t"
    lm=$(fheader warm Last-Modified)
    [[ "$lm" == Wed,* ]]
    fetch w "$t" -r 0-3 -H "If-Range: $lm"
    [ "$(fstatus w)" = 206 ]
    [ "$(fbody w)" = cach ]
    t='/_cache?max_age=600&etag=v1&lm=1'
    # A conditional that says the client's copy is current still wins: 304.
    fetch f "$t" -r 0-3 -H 'If-None-Match: "v1"'
    [ "$(fstatus f)" = 304 ]
}

@test "ranges: Accept-Ranges on hits; HEAD and POST ignore Range; a miss forwards Range to the origin" {
    start_origin o1
    start_pibl
    local t='/_bytes?size=5000'
    fetch miss "$t" -r 0-9
    # pibl-origin answers ranges with the whole 200: relayed whole, and stored.
    [ "$(fstatus miss)" = 200 ]
    grep -qi '^Range: bytes=0-9' "$(origin_heads o1)"
    wait_entry "$(key_of "$t")"
    fetch a "$t"
    [ "$(fheader a Accept-Ranges)" = bytes ]
    [ "$(fheader a X-Cache)" = HIT ]
    fetch h "$t" -I -r 0-9
    [ "$(fstatus h)" = 200 ]
    [ "$(fheader h Content-Length)" = 5000 ]
    fetch p '/_echo' -r 0-1 -d 'posted body'
    [ "$(fstatus p)" = 200 ]
    run ! fhas p Content-Range
    fetch r "$t" -r 4990-
    [ "$(fstatus r)" = 206 ]
    part r 4990 10
}

@test "ranges: curl -C - resumes a download through PIBL into a byte-identical file" {
    start_origin o1
    start_pibl
    local t='/_bytes?size=2000000' out="$BATS_TEST_TMPDIR/dl"
    stored "$t"
    digits 2000000 >"$BATS_TEST_TMPDIR/want"
    head -c 777777 "$BATS_TEST_TMPDIR/want" >"$out"       # an interrupted download
    pcurl -C - -o "$out" -D "$BATS_TEST_TMPDIR/resume.head" "$(url "$t")"
    grep -q '^HTTP/1.1 206' "$BATS_TEST_TMPDIR/resume.head"
    grep -qi '^Content-Range: bytes 777777-1999999/2000000' "$BATS_TEST_TMPDIR/resume.head"
    cmp "$out" "$BATS_TEST_TMPDIR/want"
}

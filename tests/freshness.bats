#!/usr/bin/env bats
# freshness.bats - the RFC 9111 rules of how long a stored answer may be reused and what changes it, each checked
# with a fake backend (tests/hostile_peer.py) that answers request N with exactly the bytes a test writes for it:
# Age (5.1) and the Age PIBL sends, Expires in its three date forms (5.3), statuses stored on explicit freshness,
# must-revalidate, proxy-revalidate, s-maxage and no-cache against stale-if-error (4.2.4), 304 updates (4.3.4),
# invalidation by unsafe methods and their Location and Content-Location (4.4), the targeted fields
# PIBL-Cache-Control, CDN-Cache-Control and Surrogate-Control (RFC 9213), no-cache="field" and a request's no-cache.
# Entries are made stale with touch -d on their file (never sleep).
# shellcheck disable=SC2034  # PIBL_TTL is read by the helpers

bats_require_minimum_version 1.5.0
load helpers
load hostile_helpers
load cache_helpers

setup() {
    hostile_setup
    PIBL_TTL=3600
    CACHE_DIR="$BATS_TEST_TMPDIR/cache"
}
teardown() { hostile_teardown; }

# answer N HEAD-FIELDS BODY: the fake backend's request N gets a 200 with these fields (\r\n-separated, printf %b)
# and BODY, with its Content-Length.
answer() {
    fake_answer "$1" "HTTP/1.1 200 OK\r\n$2\r\nContent-Length: ${#3}\r\n\r\n$3"
}

# http_date OFFSET FORMAT: now + OFFSET (date -d words) in FORMAT, in English and UTC.
http_date() {
    LC_ALL=C date -u -d "$1" "+$2"
}

@test "freshness: the Age an answer comes with counts: stored with it, sent as origin age plus time stored, stale on arrival when past max-age" {
    start_fake_backend "$BATS_TEST_TMPDIR/fake"
    answer 1 'Cache-Control: max-age=600\r\nAge: 30' one
    answer 2 'Cache-Control: max-age=60\r\nAge: 100\r\nETag: "x"' two
    fake_answer 3 'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\n\r\n'
    start_pibl
    fetch a /aged
    [ "$(fheader a X-Cache)" = MISS ]
    wait_entry "$(key_of /aged)"
    entry_meta "$(entry_file "$(key_of /aged)")" | grep -qx 'age: 30'
    fetch b /aged
    [ "$(fheader b X-Cache)" = HIT ]
    [ "$(fheader b Age)" -ge 30 ]
    [ "$(fheader b Age)" -le 35 ]
    # 10 s later the entry is 40 s old
    age_entry "$(key_of /aged)" '10 seconds ago'
    fetch c /aged
    [ "$(fheader c Age)" -ge 40 ]
    [ "$(fheader c Age)" -le 45 ]
    # older than its max-age on arrival: stored (it has a validator), never served without asking
    fetch d /old
    wait_entry "$(key_of /old)"
    fetch e /old
    [ "$(fheader e X-Cache)" = EXPIRED ]
    [ "$(fbody e)" = two ]
    [ "$(fake_requests)" -eq 3 ]
    grep -q 'req=3 .*GET /old' "$FAKE_DIR/log"
}

@test "freshness: the time since an answer's Date counts in its age when longer than its Age (apparent_age, RFC 9111 4.2.3)" {
    start_fake_backend "$BATS_TEST_TMPDIR/fake"
    local old now
    old=$(http_date '2 hours ago' '%a, %d %b %Y %H:%M:%S GMT')
    now=$(http_date 'now' '%a, %d %b %Y %H:%M:%S GMT')
    answer 1 "Date: $old\r\nCache-Control: max-age=3600" one
    answer 2 "Date: $old\r\nCache-Control: max-age=3600" two
    answer 3 "Date: $old\r\nCache-Control: max-age=10800\r\nAge: 60" three
    answer 4 "Date: $now\r\nCache-Control: max-age=600" four
    PIBL_TTL=86400 start_pibl
    # two hours old with an hour of life: stale on arrival, and without a validator not kept
    fetch a /old
    fetch b /old
    [ "$(fbody b)" = two ]
    # three hours of life: fresh, and its Age says about two hours, not the 60 s of its Age field
    fetch c /older
    wait_entry "$(key_of /older)"
    fetch d /older
    [ "$(fheader d X-Cache)" = HIT ]
    [ "$(fheader d Age)" -ge 7190 ]
    [ "$(fheader d Age)" -le 7210 ]
    # a Date of now adds nothing
    fetch e /now
    wait_entry "$(key_of /now)"
    fetch f /now
    [ "$(fheader f X-Cache)" = HIT ]
    [ "$(fheader f Age)" -le 2 ]
    [ "$(fake_requests)" -eq 4 ]
}

@test "freshness: an Age that is not one non-negative integer (sign, fraction, parameter, list, two lines) makes the answer stale" {
    start_fake_backend "$BATS_TEST_TMPDIR/fake"
    local -a ages=('Age: abc' 'Age: -10' 'Age: 10.0' 'Age: 10;a=b' 'Age: 0, 0' 'Age: 0\r\nAge: 0' 'Age: "10"')
    local i n=0
    for i in "${!ages[@]}"; do
        answer $((2 * i + 1)) "Cache-Control: max-age=600\r\n${ages[$i]}" "a$i"
        answer $((2 * i + 2)) "Cache-Control: max-age=600\r\n${ages[$i]}" "b$i"
    done
    answer default 'Cache-Control: max-age=600\r\nAge: 10' valid
    start_pibl
    for i in "${!ages[@]}"; do
        fetch a$i /age$i
        fetch b$i /age$i
        # no validator and stale on arrival: not reused
        [ "$(fbody b$i)" = "b$i" ] || { echo "Age variant $i (${ages[$i]}) was reused"; n=$((n + 1)); }
    done
    [ "$n" -eq 0 ]
    fetch v1 /valid
    fetch v2 /valid
    [ "$(fheader v2 X-Cache)" = HIT ]
    [ "$(fheader v2 Age)" -ge 10 ]
}

@test "freshness: Expires in IMF-fixdate, RFC 850 and asctime form gives a lifetime; an invalid date or two Expires mean already expired" {
    start_fake_backend "$BATS_TEST_TMPDIR/fake"
    local imf rfc850 asc
    imf=$(http_date '+1 hour' '%a, %d %b %Y %H:%M:%S GMT')
    rfc850=$(http_date '+1 hour' '%A, %d-%b-%y %H:%M:%S GMT')
    asc=$(http_date '+1 hour' '%a %b %e %H:%M:%S %Y')
    answer 1 "Expires: $imf" imf
    answer 2 "Expires: $rfc850" rfc850
    answer 3 "Expires: $asc" asc
    answer 4 'Expires: tomorrow' bad1
    answer 5 'Expires: tomorrow' bad2
    answer 6 "Expires: $imf\r\nExpires: $imf" two1
    answer 7 "Expires: $imf\r\nExpires: $imf" two2
    answer 8 "Expires: $(http_date '+1 hour' '%a, %d %b %Y %H:%M:%S UTC')" utc1
    answer 9 "Expires: $(http_date '+1 hour' '%a, %d %b %Y %H:%M:%S UTC')" utc2
    start_pibl 'cache_heuristic = off'
    local p
    for p in imf rfc850 asc; do
        fetch "$p" "/$p"
        wait_entry "$(key_of "/$p")"
        fetch "$p-2" "/$p"
        [ "$(fheader "$p-2" X-Cache)" = HIT ] || { echo "$p not reused"; return 1; }
        [ "$(fbody "$p-2")" = "$p" ]
        local life
        life=$(entry_lifetime "$(key_of "/$p")")
        [ "$life" -ge 3590 ]
        [ "$life" -le 3600 ]
    done
    for p in bad two utc; do
        fetch "$p-1" "/$p"
        fetch "$p-2" "/$p"
        [ "$(fbody "$p-2")" = "${p}2" ] || { echo "$p was reused"; return 1; }
    done
}

@test "freshness: 302, 307, 400, 500 and 503 are stored when they say max-age, and not without explicit freshness" {
    start_fake_backend "$BATS_TEST_TMPDIR/fake"
    local codes=(302 307 400 500 503) i=1 s
    for s in "${codes[@]}"; do
        fake_answer $i "HTTP/1.1 $s X\r\nCache-Control: max-age=60\r\nLocation: /else\r\nContent-Length: 4\r\n\r\nm$s"
        fake_answer $((i + 1)) "HTTP/1.1 $s X\r\nLocation: /else\r\nContent-Length: 4\r\n\r\nn$s"
        fake_answer $((i + 2)) "HTTP/1.1 $s X\r\nLocation: /else\r\nContent-Length: 4\r\n\r\no$s"
        i=$((i + 3))
    done
    start_pibl
    for s in "${codes[@]}"; do
        fetch "a$s" "/m$s"
        fetch "b$s" "/m$s"
        [ "$(fstatus "b$s")" = "$s" ]
        [ "$(fheader "b$s" X-Cache)" = HIT ] || { echo "$s with max-age not reused"; return 1; }
        fetch "c$s" "/n$s"
        fetch "d$s" "/n$s"
        [ "$(fheader "d$s" X-Cache)" = MISS ] || { echo "$s without freshness reused"; return 1; }
        [ "$(fbody "d$s")" = "o$s" ]
    done
}

@test "freshness: must-revalidate, proxy-revalidate, s-maxage and no-cache forbid a stale answer when the backend fails (504), whatever cache_stale_if_error says" {
    start_fake_backend "$BATS_TEST_TMPDIR/fake"
    local ccs=('max-age=1, must-revalidate' 'max-age=1, proxy-revalidate' 's-maxage=1' 'max-age=1, no-cache' 'max-age=1')
    local i
    for i in "${!ccs[@]}"; do
        answer $((i + 1)) "Cache-Control: ${ccs[$i]}\r\nETag: \"e$i\"" "body$i"
    done
    fake_answer default '' close                # from now on: closes without answering
    start_pibl 'cache_stale_if_error = 86400'
    for i in "${!ccs[@]}"; do
        fetch "s$i" "/p$i"
        wait_entry "$(key_of "/p$i")"
        age_entry "$(key_of "/p$i")" '1 minute ago'
    done
    for i in 0 1 2 3; do
        fetch "f$i" "/p$i" || true
        [ "$(fstatus "f$i")" = 504 ] || { echo "${ccs[$i]}: got $(fstatus "f$i")"; return 1; }
    done
    # without those, stale-if-error serves the stored answer
    fetch f4 /p4
    [ "$(fstatus f4)" = 200 ]
    [ "$(fheader f4 X-Cache)" = STALE ]
    [ "$(fbody f4)" = body4 ]
}

@test "freshness: an answer's own stale-if-error=N bounds how stale it may be served, over cache_stale_if_error" {
    start_fake_backend "$BATS_TEST_TMPDIR/fake"
    answer 1 'Cache-Control: max-age=1, stale-if-error=30\r\nETag: "w"' sie
    answer 2 'Cache-Control: max-age=1, stale-if-error=30\r\nETag: "w"' sie
    fake_answer default '' close
    start_pibl 'cache_stale_if_error = 86400' 'down_time = 1'
    fetch a /sie
    fetch b /sie2
    wait_entry "$(key_of /sie)"
    wait_entry "$(key_of /sie2)"
    age_entry "$(key_of /sie)" '20 seconds ago'          # 19 s past max-age: inside 30
    age_entry "$(key_of /sie2)" '2 minutes ago'          # far past it
    fetch c /sie
    [ "$(fstatus c)" = 200 ]
    [ "$(fheader c X-Cache)" = STALE ]
    sleep 1.2                                            # down_time: the backend is tried again
    fetch d /sie2 || true
    [ "$(fstatus d)" != 200 ]
}

@test "freshness: a 500, 502, 503 or 504 from the backend is an error too: the expired entry is served within stale-if-error; must-revalidate and a 404 are relayed" {
    start_fake_backend "$BATS_TEST_TMPDIR/fake"
    answer 1 'Cache-Control: max-age=1, stale-if-error=600' kept
    answer 2 'Cache-Control: max-age=1, must-revalidate' strict
    local i
    for i in 3 4 5 6; do
        local st
        st=$(printf '500 Internal Server Error\n502 Bad Gateway\n503 Service Unavailable\n504 Gateway Timeout' | sed -n "$((i - 2))p")
        fake_answer $i "HTTP/1.1 $st\r\nContent-Length: 4\r\n\r\noops"
    done
    fake_answer 9 'HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\ngone'
    start_pibl
    fetch a /kept
    fetch b /strict
    wait_entry "$(key_of /kept)"
    wait_entry "$(key_of /strict)"
    age_entry "$(key_of /kept)" '1 minute ago'
    age_entry "$(key_of /strict)" '1 minute ago'
    for i in 500 502 503 504; do
        fetch "s$i" /kept
        [ "$(fstatus "s$i")" = 200 ]
        [ "$(fheader "s$i" X-Cache)" = STALE ]
        [ "$(fbody "s$i")" = kept ]
        [[ "$(fheader "s$i" Cache-Status)" == *detail=stale-if-error* ]]
    done
    # a client's no-cache asks for validation: it gets the backend's own error
    fake_answer 7 'HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy'
    fetch q /kept -H 'Cache-Control: no-cache'
    [ "$(fstatus q)" = 503 ]
    [ "$(fbody q)" = busy ]
    # must-revalidate: the backend's own 503 goes to the client
    fake_answer 8 'HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy'
    fetch m /strict
    [ "$(fstatus m)" = 503 ]
    [ "$(fbody m)" = busy ]
    # a 404 is an answer, not an error
    fetch n /kept
    [ "$(fstatus n)" = 404 ]
    [ "$(fbody n)" = gone ]
    [ "$(fake_requests)" -eq 9 ]
}

@test "freshness: a 304 updates the stored fields (not the framing ones) and the entry is rewritten by rename; the body stays" {
    start_fake_backend "$BATS_TEST_TMPDIR/fake"
    answer 1 'Cache-Control: max-age=1\r\nETag: "v1"\r\nX-Test: a\r\nContent-Type: text/plain\r\nContent-Encoding: identity' 'the stored body'
    fake_answer 2 'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nCache-Control: max-age=100\r\nX-Test: b\r\nX-New: c\r\nContent-Type: text/html\r\nContent-Encoding: gzip\r\nContent-Length: 999\r\n\r\n'
    start_pibl
    local key f ino
    key=$(key_of /u)
    fetch a /u
    wait_entry "$key"
    f=$(entry_file "$key")
    ino=$(stat -c %i "$f")
    age_entry "$key" '1 minute ago'
    fetch b /u
    [ "$(fstatus b)" = 200 ]
    [ "$(fbody b)" = 'the stored body' ]
    [ "$(fheader b X-Test)" = b ]
    [ "$(fheader b X-New)" = c ]
    [ "$(fheader b Content-Type)" = text/html ]
    [ "$(fheader b Content-Encoding)" = identity ]
    [ "$(fheader b Content-Length)" = 15 ]
    [ "$(fheader b Cache-Control)" = max-age=100 ]
    grep -q 'If-None-Match: "v1"' "$FAKE_DIR/req-2"
    # a new file took the old one's place, with the new fields and lifetime, the same body
    wait_entry_line "$key" 'lifetime: 100'
    f=$(entry_file "$key")
    [ "$(stat -c %i "$f")" != "$ino" ]
    grep -qa '^X-Test: b' "$f"
    run ! grep -qa '^X-Test: a' "$f"
    [ "$(tail -c 15 "$f")" = 'the stored body' ]
    [ -z "$(tmp_files "$CACHE_DIR")" ]
    fetch c /u
    [ "$(fheader c X-Cache)" = HIT ]
    [ "$(fheader c X-Test)" = b ]
    [ "$(fake_requests)" -eq 2 ]
}

@test "freshness: an answer without Date is dated when it comes; a 304 without Date dates the entry anew, so Expires still ends it" {
    start_fake_backend "$BATS_TEST_TMPDIR/fake"
    local exp key d1
    answer 1 'Cache-Control: max-age=600' dated-by-pibl
    exp=$(http_date '+2 seconds' '%a, %d %b %Y %H:%M:%S GMT')
    answer 2 "Expires: $exp\r\nETag: \"e1\"" expiring
    fake_answer 3 'HTTP/1.1 304 Not Modified\r\nETag: "e1"\r\n\r\n'
    answer default 'Cache-Control: max-age=600' other
    start_pibl
    key=$(key_of /nd)
    fetch a /nd
    [ "$(fheader a X-Cache)" = MISS ]
    d1=$(fheader a Date)
    [ -n "$d1" ]
    wait_entry "$key"
    grep -qa "^Date: $d1" "$(entry_file "$key")"
    # 30 s later the hit still carries the stored Date, not now minus its age
    age_entry "$key" '30 seconds ago'
    fetch b /nd
    [ "$(fheader b X-Cache)" = HIT ]
    [ "$(fheader b Date)" = "$d1" ]

    # Expires in 2 s and no Date: PIBL dates it on arrival. Once Expires has passed, the 304 (no Date either)
    # dates the entry anew, Expires - Date is 0 or less, and the next request revalidates again: no HIT
    key=$(key_of /ex)
    fetch c /ex
    wait_entry "$key"
    sleep 2.5
    fetch d /ex
    echo "after Expires: $(fheader d X-Cache) $(fheader d Cache-Status)"
    [ "$(fheader d X-Cache)" = EXPIRED ]
    [ "$(fbody d)" = expiring ]
    fetch e /ex
    echo "next: $(fheader e X-Cache) $(fheader e Cache-Status) $(fbody e)"
    [ "$(fheader e X-Cache)" != HIT ]
    [ "$(fake_requests)" -eq 4 ]
}

@test "freshness: requests collapsed behind a miss stop waiting once its head says it will not be stored (private, or over cache_max_object)" {
    start_fake_backend "$BATS_TEST_TMPDIR/fake"
    local head1='HTTP/1.1 200 OK\r\nCache-Control: private\r\nContent-Length: 4\r\n\r\n'
    local head4='HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nContent-Length: 4000\r\n\r\n'
    fake_answer 1 "${head1}slow"
    printf '%s 4\n' "$(printf '%b' "$head1" | wc -c)" >"$FAKE_DIR/1.split"      # the body 4 s after the head
    fake_answer 4 "${head4}$(head -c 4000 /dev/zero | tr '\0' b)"
    printf '%s 4\n' "$(printf '%b' "$head4" | wc -c)" >"$FAKE_DIR/4.split"
    answer default 'Cache-Control: private' quick
    PIBL_TTL=600 start_pibl 'cache_max_object = 1000'
    local t k
    for t in /private /big; do
        pcurl -o "$BATS_TEST_TMPDIR/first.body" "$(url "$t")" &
        local first=$!
        track_pid "$first"
        # the others come once the first is at the backend
        wait_for_count "$FAKE_DIR/log" "GET $t" 1 "$HELPER_WAIT_SECS"
        sleep 0.2
        for k in 1 2; do
            fetch "w$k${t#/}" "$t"
            [ "$(fbody "w$k${t#/}")" = quick ]
        done
        # both answered while the first answer's body is still on its way
        pid_alive "$first"
        wait "$first"
        untrack_pid "$first"
    done
    [ "$(head -c 4 "$BATS_TEST_TMPDIR/first.body")" = bbbb ]
}

@test "freshness: two new Vary variants fetched at once that hash to one slot both end up stored (the second looks again after waiting)" {
    start_fake_backend "$BATS_TEST_TMPDIR/fake"
    local head='HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nVary: Accept-Language\r\nContent-Length: 2\r\n\r\n'
    fake_answer 1 "${head}zz"
    fake_answer 2 "${head}aa"
    printf '%s 1.5\n' "$(printf '%b' "$head" | wc -c)" >"$FAKE_DIR/2.split"        # aa's body 1.5 s late
    fake_answer 3 "${head}ai"
    PIBL_TTL=600 start_pibl
    fetch z /v -H 'Accept-Language: zz'
    wait_entries 1
    # "aa" and "ai" hash to the same variant slot
    pcurl -o "$BATS_TEST_TMPDIR/aa.body" -H 'Accept-Language: aa' "$(url /v)" &
    local first=$!
    track_pid "$first"
    wait_for_count "$FAKE_DIR/log" 'req=2 ' 1 "$HELPER_WAIT_SECS"
    fetch ai /v -H 'Accept-Language: ai'
    [ "$(fbody ai)" = ai ]
    wait "$first"
    untrack_pid "$first"
    wait_entries 3
    fetch a2 /v -H 'Accept-Language: aa'
    [ "$(fheader a2 X-Cache)" = HIT ]
    [ "$(fbody a2)" = aa ]
    fetch i2 /v -H 'Accept-Language: ai'
    [ "$(fheader i2 X-Cache)" = HIT ]
    [ "$(fbody i2)" = ai ]
    [ "$(fake_requests)" -eq 3 ]
}

@test "freshness: only-if-cached never reaches the backend: a stale entry inside stale-while-revalidate is a 504 too" {
    start_fake_backend "$BATS_TEST_TMPDIR/fake"
    answer 1 'Cache-Control: max-age=1, stale-while-revalidate=60\r\nETag: "o1"' old
    answer default 'Cache-Control: max-age=600' new
    start_pibl
    local key
    key=$(key_of /oic)
    fetch a /oic
    wait_entry "$key"
    age_entry "$key" '10 seconds ago'
    fetch b /oic -H 'Cache-Control: only-if-cached'
    echo "$(fstatus b) $(fheader b X-Cache)"
    [ "$(fstatus b)" = 504 ]
    fetch c /oic -H 'Cache-Control: only-if-cached, no-store'
    [ "$(fstatus c)" = 504 ]
    sleep 0.3                                   # a background refresh would have started by now
    [ "$(fake_requests)" -eq 1 ]
}

@test "freshness: an answer with 100 fields and no Date is stored as it is and served from the cache" {
    start_fake_backend "$BATS_TEST_TMPDIR/fake"
    local fields="Cache-Control: max-age=600" i
    for ((i = 2; i <= 100; i++)); do
        fields+="\\r\\nX-F$i: v"
    done
    # close-delimited, so all 100 fields are stored (a Content-Length would not be)
    fake_answer 1 "HTTP/1.1 200 OK\\r\\n$fields\\r\\n\\r\\nhundred" close
    start_pibl
    fetch a /hundred
    [ "$(fbody a)" = hundred ]
    wait_entry "$(key_of /hundred)"
    fetch b /hundred
    [ "$(fheader b X-Cache)" = HIT ]
    [ "$(fbody b)" = hundred ]
    [ "$(fake_requests)" -eq 1 ]
}

# head_answer N FIELDS LEN: request N (a HEAD) gets a 200 with these fields and Content-Length LEN, no body.
head_answer() {
    fake_answer "$1" "HTTP/1.1 200 OK\r\n$2\r\nContent-Length: $3\r\n\r\n"
}

@test "freshness: a HIT's conditionals (RFC 9110 13.2): If-None-Match is one list over its lines, * and a Date stand in for missing validators, a stored 404 ignores them; If-Match and If-Unmodified-Since go to the backend" {
    start_fake_backend "$BATS_TEST_TMPDIR/fake"
    local lm day_before
    lm=$(http_date '2 days ago' '%a, %d %b %Y %H:%M:%S GMT')
    day_before=$(http_date '3 days ago' '%a, %d %b %Y %H:%M:%S GMT')
    answer 1 "Cache-Control: max-age=600\r\nETag: \"v1\"\r\nLast-Modified: $lm" tagged
    answer 2 'Cache-Control: max-age=600' plain
    fake_answer 3 'HTTP/1.1 404 Not Found\r\nCache-Control: max-age=600\r\nETag: "n1"\r\nContent-Length: 4\r\n\r\ngone'
    fake_answer default 'HTTP/1.1 412 Precondition Failed\r\nContent-Length: 0\r\n\r\n'
    start_pibl
    fetch a /tagged
    fetch b /plain
    fetch c /gone
    wait_entry "$(key_of /tagged)"
    wait_entry "$(key_of /plain)"
    wait_entry "$(key_of /gone)"

    fetch n1 /tagged -H 'If-None-Match: "a"' -H 'If-None-Match: "v1"'
    [ "$(fstatus n1)" = 304 ]
    [ "$(fheader n1 ETag)" = '"v1"' ]
    [ "$(fheader n1 X-Cache)" = HIT ]

    # no validators stored: * still names the stored answer, and its Date stands for Last-Modified
    fetch p1 /plain -H 'If-None-Match: *'
    [ "$(fstatus p1)" = 304 ]
    fetch p2 /plain -H "If-Modified-Since: $(http_date '1 minute' '%a, %d %b %Y %H:%M:%S GMT')"
    [ "$(fstatus p2)" = 304 ]
    fetch p3 /plain -H "If-Modified-Since: $day_before"
    [ "$(fstatus p3)" = 200 ]
    [ "$(fbody p3)" = plain ]

    # a stored 404 answers as a 404 whatever the conditionals say (13.2.1)
    fetch g1 /gone -H 'If-None-Match: "n1"'
    [ "$(fstatus g1)" = 404 ]
    [ "$(fheader g1 X-Cache)" = HIT ]
    [ "$(fbody g1)" = gone ]
    [ "$(fake_requests)" -eq 3 ]

    # If-Match and If-Unmodified-Since are not a cache's to judge (RFC 9111 4.3.2): the backend answers
    fetch m1 /tagged -H 'If-Match: "v2"'
    [ "$(fstatus m1)" = 412 ]
    [ "$(fheader m1 X-Cache)" = BYPASS ]
    fetch u1 /tagged -H "If-Unmodified-Since: $day_before"
    [ "$(fstatus u1)" = 412 ]
    [ "$(fake_requests)" -eq 5 ]
    grep -q '^If-Match: "v2"' "$FAKE_DIR/req-4"
    # and the entry is still there
    fetch z /tagged
    [ "$(fheader z X-Cache)" = HIT ]
}

@test "freshness: a HEAD answer with the stored validators and length updates the entry's fields (RFC 9111 4.3.5); another ETag, Last-Modified or length invalidates it" {
    start_fake_backend "$BATS_TEST_TMPDIR/fake"
    local lm
    lm=$(http_date '2 days ago' '%a, %d %b %Y %H:%M:%S GMT')
    answer 1 "Cache-Control: max-age=1\r\nETag: \"v1\"\r\nLast-Modified: $lm\r\nX-Test: a" 'the stored body'
    head_answer 2 "Cache-Control: max-age=100\r\nETag: \"v1\"\r\nLast-Modified: $lm\r\nX-Test: b" 15
    answer 3 'Cache-Control: max-age=1\r\nETag: "e1"\r\nX-Test: a' 'body one'
    head_answer 4 'Cache-Control: max-age=100\r\nETag: "e2"\r\nX-Test: b' 8
    answer 5 'Cache-Control: max-age=100\r\nETag: "e2"' 'body two'
    answer 6 "Cache-Control: max-age=1\r\nLast-Modified: $lm" 'body lm'
    head_answer 7 "Cache-Control: max-age=100\r\nLast-Modified: $(http_date '1 hour ago' '%a, %d %b %Y %H:%M:%S GMT')" 7
    answer 8 'Cache-Control: max-age=1\r\nETag: "n1"' 'body n'
    head_answer 9 'Cache-Control: max-age=100\r\nETag: "n1"' 99
    start_pibl
    local u s v w
    u=$(key_of /u) s=$(key_of /s) v=$(key_of /v) w=$(key_of /w)

    # the same validators and length: the stored fields take the HEAD's, the body stays
    fetch a /u
    wait_entry "$u"
    age_entry "$u" '1 minute ago'
    fetch h /u -I
    [ "$(fstatus h)" = 200 ]
    [ "$(fheader h X-Test)" = b ]
    [ "$(fheader h Content-Length)" = 15 ]
    wait_entry_line "$u" 'lifetime: 100'
    fetch b /u
    [ "$(fheader b X-Cache)" = HIT ]
    [ "$(fheader b X-Test)" = b ]
    [ "$(fbody b)" = 'the stored body' ]
    [ "$(fake_requests)" -eq 2 ]

    # another ETag: the entry goes, the next GET asks the origin
    fetch c /s
    wait_entry "$s"
    age_entry "$s" '1 minute ago'
    fetch h2 /s -I
    [ "$(fheader h2 ETag)" = '"e2"' ]
    wait_no_entry "$s"
    fetch d /s
    [ "$(fheader d X-Cache)" = MISS ]
    [ "$(fbody d)" = 'body two' ]
    [ "$(fake_requests)" -eq 5 ]

    # another Last-Modified, and another length: the same
    fetch e /v
    wait_entry "$v"
    age_entry "$v" '1 minute ago'
    fetch h3 /v -I
    wait_no_entry "$v"
    fetch f /w
    wait_entry "$w"
    age_entry "$w" '1 minute ago'
    fetch h4 /w -I
    [ "$(fheader h4 Content-Length)" = 99 ]
    wait_no_entry "$w"
    [ "$(fake_requests)" -eq 9 ]
}

@test "freshness: unsafe methods, unknown ones too, invalidate the target and same-host Location and Content-Location; safe ones and errors do not" {
    start_fake_backend "$BATS_TEST_TMPDIR/fake"
    answer default 'Cache-Control: max-age=600' stored
    start_pibl
    local p i=0
    for p in /t /loc /cl /dir/rel /other; do
        i=$((i + 1))
        fetch "w$i" "$p"
        wait_entry "$(key_of "$p")"
    done
    fetch wo /x -H 'Host: other.test'
    wait_entry "$(key_of /x other.test)"
    local n
    # M-SEARCH, a method PIBL does not know, answered 200: the target goes
    n=$(fake_requests)
    fake_answer $((n + 1)) 'HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n'
    pcurl -o /dev/null -X M-SEARCH "$(url /t)"
    wait_no_entry "$(key_of /t)"
    # POST with Location (absolute path) and Content-Location (absolute URI, same host): both go
    n=$(fake_requests)
    fake_answer $((n + 1)) "HTTP/1.1 201 Created\r\nLocation: /loc\r\nContent-Location: http://127.0.0.1:$PIBL_PORT/cl\r\nContent-Length: 0\r\n\r\n"
    pcurl -o /dev/null -X POST -d x "$(url /dir/form)"
    wait_no_entry "$(key_of /loc)"
    wait_no_entry "$(key_of /cl)"
    # a relative Location resolves against the target's folder; another host's URI is left alone
    n=$(fake_requests)
    fake_answer $((n + 1)) 'HTTP/1.1 204 No Content\r\nLocation: rel\r\nContent-Location: http://other.test/x\r\n\r\n'
    pcurl -o /dev/null -X PUT -d x "$(url /dir/item)"
    wait_no_entry "$(key_of /dir/rel)"
    [ -n "$(entry_file "$(key_of /x other.test)")" ]
    # a safe method (QUERY, OPTIONS) and an unsafe one that failed leave the entry
    n=$(fake_requests)
    fake_answer $((n + 1)) 'HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n'
    fake_answer $((n + 2)) 'HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n'
    fake_answer $((n + 3)) 'HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n'
    pcurl -o /dev/null -X QUERY "$(url /other)"
    pcurl -o /dev/null -X OPTIONS "$(url /other)"
    pcurl -o /dev/null -X DELETE "$(url /other)"
    [ -n "$(entry_file "$(key_of /other)")" ]
    fetch still /other
    [ "$(fheader still X-Cache)" = HIT ]
    # the default port names the same host: other.test:80 is other.test's entry
    n=$(fake_requests)
    fake_answer $((n + 1)) 'HTTP/1.1 204 No Content\r\nContent-Location: http://other.test:80/x\r\n\r\n'
    pcurl -o /dev/null -X PUT -d x -H 'Host: other.test:80' "$(url /y)"
    wait_no_entry "$(key_of /x other.test)"
}

@test "freshness: PIBL-Cache-Control, then CDN-Cache-Control, then Surrogate-Control win over Cache-Control; PIBL's own field is not passed on" {
    start_fake_backend "$BATS_TEST_TMPDIR/fake"
    answer 1 'Cache-Control: no-store\r\nCDN-Cache-Control: max-age=60' cdn1
    answer 2 'Cache-Control: max-age=600\r\nCDN-Cache-Control: no-store' nostore1
    answer 3 'Cache-Control: max-age=600\r\nCDN-Cache-Control: no-store' nostore2
    answer 4 'Cache-Control: no-store\r\nCDN-Cache-Control: no-store\r\nPIBL-Cache-Control: max-age=60' own1
    answer 5 'Cache-Control: no-store\r\nSurrogate-Control: max-age=60;pibl' sur1
    answer 6 'Cache-Control: max-age=600\r\nSurrogate-Control: max-age=60;other' sc1
    answer 7 'Cache-Control: no-store\r\nSurrogate-Control: max-age=60;other' sc2
    answer 8 'Cache-Control: no-store\r\nSurrogate-Control: max-age=60;other' sc3
    start_pibl
    fetch a /cdn
    [ "$(fheader a CDN-Cache-Control)" = max-age=60 ]     # passed on, for caches after PIBL
    wait_entry "$(key_of /cdn)"
    fetch a2 /cdn
    [ "$(fheader a2 X-Cache)" = HIT ]
    [ "$(entry_lifetime "$(key_of /cdn)")" -eq 60 ]
    fetch b /nostore
    fetch b2 /nostore
    [ "$(fbody b2)" = nostore2 ]
    fetch c /own
    run ! fhas c PIBL-Cache-Control                       # for PIBL only
    wait_entry "$(key_of /own)"
    fetch c2 /own
    [ "$(fheader c2 X-Cache)" = HIT ]
    run ! fhas c2 PIBL-Cache-Control
    [ "$(entry_lifetime "$(key_of /own)")" -eq 60 ]
    # Surrogate-Control directives for "pibl" count, another device's do not
    fetch d /sur
    wait_entry "$(key_of /sur)"
    fetch d2 /sur
    [ "$(fheader d2 X-Cache)" = HIT ]
    grep -q '^Surrogate-Capability: pibl="Surrogate/1.0"' <(tr -d '\r' <"$FAKE_DIR/req-1")
    # a Surrogate-Control with nothing for PIBL leaves Cache-Control in charge
    fetch e /sc
    wait_entry "$(key_of /sc)"
    fetch e2 /sc
    [ "$(fheader e2 X-Cache)" = HIT ]
    [ "$(fbody e2)" = sc1 ]
    fetch f /nsc
    fetch f2 /nsc
    [ "$(fbody f2)" = sc3 ]
}

@test "freshness: no-cache=\"Field\" stores the answer without that field; a request's no-cache revalidates what is stored instead of dropping it" {
    start_fake_backend "$BATS_TEST_TMPDIR/fake"
    answer 1 'Cache-Control: max-age=600, no-cache="X-Secret, X-Other"\r\nX-Secret: s\r\nX-Other: o\r\nX-Kept: k\r\nETag: "n1"' named
    fake_answer 2 'HTTP/1.1 304 Not Modified\r\nETag: "n1"\r\nCache-Control: max-age=600\r\n\r\n'
    start_pibl
    fetch a /named
    [ "$(fheader a X-Secret)" = s ]                        # the first client gets it
    wait_entry "$(key_of /named)"
    run ! grep -qa '^X-Secret:' "$(entry_file "$(key_of /named)")"
    run ! grep -qa '^X-Other:' "$(entry_file "$(key_of /named)")"
    fetch b /named
    [ "$(fheader b X-Cache)" = HIT ]
    run ! fhas b X-Secret
    [ "$(fheader b X-Kept)" = k ]
    # Cache-Control: no-cache in the request: asked with the stored ETag, the 304 serves the stored body
    fetch c /named -H 'Cache-Control: no-cache'
    [ "$(fstatus c)" = 200 ]
    [ "$(fbody c)" = named ]
    grep -q 'If-None-Match: "n1"' "$FAKE_DIR/req-2"
    [ -n "$(entry_file "$(key_of /named)")" ]
    fetch d /named
    [ "$(fheader d X-Cache)" = HIT ]
    [ "$(fake_requests)" -eq 2 ]
}

@test "freshness: a ranged miss on a large object forwards the Range: the backend's 206 is relayed at once and not stored" {
    start_fake_backend "$BATS_TEST_TMPDIR/fake"
    # request 1: the range of a 50 MB object; the connection then stays open and idle
    fake_answer 1 'HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 1000-1009/50000000\r\nCache-Control: max-age=600\r\nETag: "big"\r\nContent-Length: 10\r\n\r\n0123456789'
    answer default 'Cache-Control: max-age=600' whole
    start_pibl
    fetch r /big -r 1000-1009
    [ "$(fstatus r)" = 206 ]
    [ "$(fheader r Content-Range)" = 'bytes 1000-1009/50000000' ]
    [ "$(fbody r)" = 0123456789 ]
    tr -d '\r' <"$FAKE_DIR/req-1" | grep -qx 'Range: bytes=1000-1009'
    # a 206 is never an entry: the next request for the whole object asks the backend
    [ "$(n_entries)" -eq 0 ]
    fetch w /big
    [ "$(fstatus w)" = 200 ]
    [ "$(fbody w)" = whole ]
    [ "$(fake_requests)" -eq 2 ]
}

@test "freshness: stale-while-revalidate answers at once from the stale entry and one background request refreshes it, for all clients" {
    start_fake_backend "$BATS_TEST_TMPDIR/fake"
    answer 1 'Cache-Control: max-age=1, stale-while-revalidate=60\r\nETag: "s1"' old
    answer 2 'Cache-Control: max-age=600\r\nETag: "s2"' new
    echo 1 >"$FAKE_DIR/2.delay"                  # the refresh takes a second
    answer default 'Cache-Control: max-age=600' extra
    start_pibl
    local key i
    key=$(key_of /swr)
    fetch a /swr
    wait_entry "$key"
    age_entry "$key" '10 seconds ago'            # 9 s stale: inside the 60 s window
    local pids=()
    for i in 1 2 3 4 5 6 7 8; do
        fetch "s$i" /swr >/dev/null &
        pids+=($!)
    done
    wait "${pids[@]}"
    for i in 1 2 3 4 5 6 7 8; do
        [ "$(fbody "s$i")" = old ] || { echo "client $i: $(fbody "s$i")"; return 1; }
        [ "$(fheader "s$i" X-Cache)" = STALE ]
        [[ "$(fheader "s$i" Cache-Status)" == *'detail=stale-while-revalidate'* ]]
    done
    # one conditional request, whatever the number of clients; the new answer replaces the entry
    wait_entry_line "$key" 'lifetime: 600'
    [ "$(fake_requests)" -eq 2 ]
    grep -q 'If-None-Match: "s1"' "$FAKE_DIR/req-2"
    fetch b /swr
    [ "$(fheader b X-Cache)" = HIT ]
    [ "$(fbody b)" = new ]
    # past the window, or with must-revalidate, the client waits for the backend
    answer 3 'Cache-Control: max-age=1, stale-while-revalidate=5\r\nETag: "p1"' past1
    answer 4 'Cache-Control: max-age=600' past2
    fetch c /past
    wait_entry "$(key_of /past)"
    age_entry "$(key_of /past)" '1 minute ago'
    fetch d /past
    [ "$(fbody d)" = past2 ]
    [ "$(fheader d X-Cache)" = EXPIRED ]
    answer 5 'Cache-Control: max-age=1, stale-while-revalidate=60, must-revalidate\r\nETag: "m1"' mr1
    answer 6 'Cache-Control: max-age=600' mr2
    fetch e /mr
    wait_entry "$(key_of /mr)"
    age_entry "$(key_of /mr)" '10 seconds ago'
    fetch f /mr
    [ "$(fbody f)" = mr2 ]
}

@test "freshness: a background refresh answered 304 updates the entry's fields; one that fails leaves the stale entry and says why" {
    start_fake_backend "$BATS_TEST_TMPDIR/fake"
    answer 1 'Cache-Control: max-age=1, stale-while-revalidate=60\r\nETag: "r1"\r\nX-Gen: 1' body1
    fake_answer 2 'HTTP/1.1 304 Not Modified\r\nETag: "r1"\r\nCache-Control: max-age=300, stale-while-revalidate=60\r\nX-Gen: 2\r\n\r\n'
    answer 3 'Cache-Control: max-age=1, stale-while-revalidate=60\r\nETag: "q1"' q1
    fake_answer 4 '' close
    start_pibl
    local key
    key=$(key_of /r)
    fetch a /r
    wait_entry "$key"
    age_entry "$key" '5 seconds ago'
    fetch b /r
    [ "$(fheader b X-Cache)" = STALE ]
    [ "$(fheader b X-Gen)" = 1 ]
    wait_entry_line "$key" 'lifetime: 300'
    fetch c /r
    [ "$(fheader c X-Cache)" = HIT ]
    [ "$(fheader c X-Gen)" = 2 ]
    [ "$(fbody c)" = body1 ]
    # the backend closes on the refresh: the entry stays as it was, and the error log says so
    fetch d /q
    wait_entry "$(key_of /q)"
    age_entry "$(key_of /q)" '5 seconds ago'
    fetch e /q
    [ "$(fbody e)" = q1 ]
    wait_for_line "$PIBL_OUT" "^pibl: warning: cache: background refresh of $(key_of /q) failed: no answer\$"
    [ -n "$(entry_file "$(key_of /q)")" ]
}

/*
 * tests/fuzz.cpp - libFuzzer harnesses for PIBL's parsers of peer bytes:
 * the request head (http_find_head_end + http_parse_request), the response
 * head (http_find_head_end + http_parse_response), the chunked body decoder
 * (http_chunked_step) and the freshness fields of a response (freshness.h:
 * Cache-Control and the targeted fields, Age, Expires, HTTP-dates). One
 * file, four targets, chosen at build time with
 * -DFUZZ_TARGET=request|response|chunked|freshness:
 *
 *   clang++ -g -O1 -fsanitize=fuzzer,address,undefined -std=c++17 -pthread -I. \
 *       -DPIBL_NO_MAIN -DFUZZ_TARGET=request -o tests/fuzz-request tests/fuzz.cpp $(PIBL_SRCS)
 *
 * (`make fuzz` builds all four; `make fuzz-run` runs each for FUZZ_SECONDS
 * from the seed corpus in tests/fuzz-corpus/TARGET with tests/fuzz-corpus/http.dict.)
 *
 * Besides the sanitizers' memory checks, each target asserts invariants and
 * aborts (a libFuzzer crash) when one fails:
 *  - every view a parser returns lies inside the bytes it was given, and the
 *    views hold only what the grammar allows (tchar names, values without
 *    CTL and without surrounding whitespace, a visible-ASCII target);
 *  - a head found by http_find_head_end ends in CRLF CRLF, holds no NUL and
 *    no bare LF, and the same answer comes whether the bytes arrive whole or
 *    one at a time (its incremental scan);
 *  - a field count equals the number of CRLF-terminated lines of the head;
 *  - a request's Range, against a stored answer of a few sizes, names a
 *    part inside it and never an empty one (conditional.h);
 *  - http_parse_content_length agrees with a plain digit reader;
 *  - the chunked decoder always makes progress, never hands out a data span
 *    longer than what it consumed, and gives the same data, the same end and
 *    the same verdict for the input fed whole, split at every position (at
 *    some positions for long inputs) or a byte at a time; when it accepts, an
 *    independent re-parse of the consumed bytes finds the same data; when a
 *    strict RFC 9112 7.1 reference decoder accepts an input within PIBL's
 *    documented caps, PIBL accepts it too, with the same data, and what
 *    PIBL accepts the reference accepts (no looser than the grammar).
 *
 * What it does not do: open sockets, files or threads; the parsers are pure.
 * Limits: inputs past FUZZ_MAX_SPLIT_ALL bytes are split at FUZZ_N_SPLITS
 * positions instead of all of them (keeps an execution in the millisecond
 * range).
 */
#include "conditional.h"
#include "freshness.h"
#include "http.h"
#include "httpdate.h"
#include "pibl.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <string>

#define FUZZ_request    1
#define FUZZ_response   2
#define FUZZ_chunked    3
#define FUZZ_freshness  4
#define FUZZ_CAT(a, b)  a##b
#define FUZZ_PICK(t)    FUZZ_CAT(FUZZ_, t)

#ifndef FUZZ_TARGET
#error "build with -DFUZZ_TARGET=request, response, chunked or freshness"
#endif
#define FUZZ_WHICH      FUZZ_PICK(FUZZ_TARGET)
#if FUZZ_WHICH == FUZZ_freshness
#pragma GCC diagnostic ignored "-Wunused-function"   /* it uses a part of the head checks */
#endif

#define FUZZ_MAX_SPLIT_ALL  64     /* inputs up to this size: split at every position */
#define FUZZ_N_SPLITS       16     /* longer inputs: this many split positions */
#define FUZZ_SMALL_URI      16     /* a second, tiny max_uri to reach the 414 path */

/* Abort with a message: libFuzzer records the input as a crash. */
#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "fuzz: invariant failed at %s:%d: %s\n", __FILE__,       \
                __LINE__, #cond);                                                    \
            abort();                                                                 \
        }                                                                            \
    } while (0)

/* ---------------------------------------------------------------- shared checks */

/* RFC 9110 5.6.2 tchar */
static int
tchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
        (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

#if FUZZ_WHICH != FUZZ_chunked                 /* the head checks */

/* 1 if [p, p+len) lies inside [buf, buf+n). */
static int
inside(const char *buf, size_t n, const char *p, size_t len)
{
    return p >= buf && p <= buf + n && len <= (size_t)(buf + n - p);
}

/* A field value: no CTL but HTAB, no DEL; no leading or trailing SP/HTAB. */
static int
clean_value(const char *v, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)v[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return 0;
    }
    if (len > 0 && (v[0] == ' ' || v[0] == '\t' || v[len - 1] == ' ' || v[len - 1] == '\t'))
        return 0;
    return 1;
}

/* Reference for http_parse_content_length: one or more decimal digits,
 * nothing else, at most 18 of them after the leading zeros. */
static long long
ref_content_length(const char *v, size_t len)
{
    long long n = 0;
    size_t significant = 0;

    if (len == 0)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -1;
        if (significant > 0 || v[i] != '0')
            significant++;
        if (significant > 18)
            return -1;
        n = n * 10 + (v[i] - '0');
    }
    return n;
}

/* Check the header views of a parsed head buf[0..n). */
static void
check_headers(const char *buf, size_t n, const struct http_header *h, int n_headers)
{
    CHECK(n_headers >= 0 && n_headers <= MAX_HEADERS);
    for (int i = 0; i < n_headers; i++) {
        CHECK(inside(buf, n, h[i].name, h[i].name_len));
        CHECK(inside(buf, n, h[i].value, h[i].value_len));
        CHECK(h[i].name_len > 0);
        for (size_t j = 0; j < h[i].name_len; j++)
            CHECK(tchar((unsigned char)h[i].name[j]));
        CHECK(clean_value(h[i].value, h[i].value_len));
        CHECK(http_parse_content_length(h[i].value, h[i].value_len) ==
            ref_content_length(h[i].value, h[i].value_len));
    }
}

/* Number of CRLF pairs in buf[from..n). */
static int
count_crlf(const char *buf, size_t from, size_t n)
{
    int c = 0;

    for (size_t i = from; i + 1 < n; i++)
        if (buf[i] == '\r' && buf[i + 1] == '\n')
            c++;
    return c;
}

/*
 * http_find_head_end on buf[0..n), whole and then a byte at a time with its
 * incremental scan; both must agree. Returns the head length, -1 or -2.
 */
static long
check_head_end(const char *buf, size_t n)
{
    size_t scan = 0;
    long whole = http_find_head_end(buf, n, &scan);

    CHECK(whole == -1 || whole == -2 || (whole >= 4 && (size_t)whole <= n));
    if (whole == -2)
        CHECK(scan == n);
    if (whole > 0) {
        CHECK(memcmp(buf + whole - 4, "\r\n\r\n", 4) == 0);
        CHECK(memchr(buf, '\0', (size_t)whole) == NULL);
        for (long i = 0; i < whole; i++)
            if (buf[i] == '\n')
                CHECK(i > 0 && buf[i - 1] == '\r');
        /* The first blank line ends the head: no earlier CRLF CRLF. */
        for (long i = 0; i + 4 < whole; i++)
            CHECK(memcmp(buf + i, "\r\n\r\n", 4) != 0);
    }

    long step = -2;
    scan = 0;
    for (size_t k = 1; k <= n && step == -2; k++) {
        size_t before = scan;
        step = http_find_head_end(buf, k, &scan);
        if (step == -2)
            CHECK(scan == k && scan >= before);
    }
    CHECK(step == whole);
    return whole;
}

#endif

/* ---------------------------------------------------------------- request */

#if FUZZ_WHICH == FUZZ_request

static void
check_request(const char *buf, size_t n, size_t max_uri, int rc, const struct http_request *r)
{
    CHECK(rc == 0 || rc == HTTP_MALFORMED || rc == HTTP_URI_TOO_LONG || rc == HTTP_TOO_MANY_FIELDS ||
        rc == HTTP_BAD_VERSION);
    if (rc != 0)
        return;
    CHECK(inside(buf, n, r->method, r->method_len) && r->method_len > 0);
    for (size_t i = 0; i < r->method_len; i++)
        CHECK(tchar((unsigned char)r->method[i]));
    CHECK(inside(buf, n, r->target, r->target_len));
    CHECK(r->target_len > 0 && r->target_len <= max_uri);
    for (size_t i = 0; i < r->target_len; i++)
        CHECK(r->target[i] > 0x20 && r->target[i] < 0x7f);
    CHECK(r->minor_version == 0 || r->minor_version == 1);
    check_headers(buf, n, r->headers, r->n_headers);
}

/* A parsed request's Range and conditionals against a stored 200 of a few
 * sizes (conditional.h): a part lies inside the entry and is not empty;
 * the verdict is one of the three; the conditional check one of its two. */
static void
check_conditionals(const struct http_request *r)
{
    static const char stored_head[] = "HTTP/1.1 200 OK\r\nETag: \"v1\"\r\n"
        "Last-Modified: Wed, 21 Oct 2015 07:28:00 GMT\r\n\r\n";
    static const uint64_t totals[] = { 0, 1, 1000, (uint64_t)1 << 40 };
    static struct http_response stored;    /* parsed once: its views point into stored_head */
    static const int parsed = http_parse_response(stored_head, sizeof stored_head - 1, &stored) == 0;

    CHECK(parsed);
    int cur = cond_evaluate(r, &stored, 1445412480);
    CHECK(cur == COND_SERVE || cur == COND_NOT_MODIFIED);
    for (size_t i = 0; i < sizeof totals / sizeof totals[0]; i++) {
        uint64_t from = 0, len = 0;
        int v = cond_range(r, &stored, totals[i], &from, &len);
        CHECK(v == COND_RANGE_WHOLE || v == COND_RANGE_PART || v == COND_RANGE_UNSATISFIABLE);
        if (v == COND_RANGE_PART)
            CHECK(len > 0 && from < totals[i] && len <= totals[i] - from);
    }
}

static void
fuzz_one(const char *buf, size_t n)
{
    struct http_request req, small;

    /* The raw bytes, head or not: the parser must stay inside them. */
    memset(&req, 0, sizeof req);
    check_request(buf, n, 8192, http_parse_request(buf, n, 8192, &req), &req);

    long head = check_head_end(buf, n);
    if (head <= 0)
        return;
    size_t hl = (size_t)head;
    memset(&req, 0, sizeof req);
    int rc = http_parse_request(buf, hl, 8192, &req);
    check_request(buf, hl, 8192, rc, &req);
    if (rc == 0) {
        size_t skip = 0;
        while (skip + 1 < hl && buf[skip] == '\r' && buf[skip + 1] == '\n')
            skip += 2;
        CHECK(req.method == buf + skip);
        CHECK(req.n_headers == count_crlf(buf, skip, hl) - 2);
        check_conditionals(&req);
    }
    /* The same head under a tiny max_uri: a longer valid target is a 414. */
    memset(&small, 0, sizeof small);
    int rc_small = http_parse_request(buf, hl, FUZZ_SMALL_URI, &small);
    check_request(buf, hl, FUZZ_SMALL_URI, rc_small, &small);
    if (rc == 0 && req.target_len > FUZZ_SMALL_URI)
        CHECK(rc_small == HTTP_URI_TOO_LONG);
    if (rc == 0 && req.target_len <= FUZZ_SMALL_URI)
        CHECK(rc_small == 0 && small.n_headers == req.n_headers);
}

#endif

/* ---------------------------------------------------------------- response */

#if FUZZ_WHICH == FUZZ_response

static void
check_response(const char *buf, size_t n, int rc, const struct http_response *r)
{
    CHECK(rc == 0 || rc == -1);
    if (rc != 0)
        return;
    CHECK(r->status >= 100 && r->status <= 599);
    CHECK(r->minor_version == 0 || r->minor_version == 1);
    CHECK(inside(buf, n, r->reason, r->reason_len));
    for (size_t i = 0; i < r->reason_len; i++) {
        unsigned char c = (unsigned char)r->reason[i];
        CHECK(c == '\t' || (c >= 0x20 && c != 0x7f));
    }
    check_headers(buf, n, r->headers, r->n_headers);
}

static void
fuzz_one(const char *buf, size_t n)
{
    struct http_response resp;

    memset(&resp, 0, sizeof resp);
    check_response(buf, n, http_parse_response(buf, n, &resp), &resp);

    long head = check_head_end(buf, n);
    if (head <= 0)
        return;
    memset(&resp, 0, sizeof resp);
    int rc = http_parse_response(buf, (size_t)head, &resp);
    check_response(buf, (size_t)head, rc, &resp);
    if (rc == 0) {
        CHECK(memcmp(buf, "HTTP/", 5) == 0);
        CHECK(resp.n_headers == count_crlf(buf, 0, (size_t)head) - 2);
    }
}

#endif

/* ---------------------------------------------------------------- chunked */

#if FUZZ_WHICH == FUZZ_freshness

/* The freshness parsers (freshness.h) over the fields of any response
 * head: values in range, views inside the head, and every date read
 * back the same once written as an IMF-fixdate. */
static void
check_cc(const char *buf, size_t n, const struct cache_ctl *cc)
{
    const long *deltas[] = { &cc->max_age, &cc->s_maxage, &cc->stale_while_revalidate,
        &cc->stale_if_error, &cc->min_fresh };
    for (size_t i = 0; i < sizeof deltas / sizeof deltas[0]; i++)
        CHECK(*deltas[i] >= -1 && *deltas[i] <= 2147483647L);
    CHECK(cc->max_stale >= -1);
    CHECK(cc->n_omit >= 0 && cc->n_omit <= MAX_NO_CACHE_FIELDS);
    for (int i = 0; i < cc->n_omit; i++)
        CHECK(cc->omit[i].len > 0 && inside(buf, n, cc->omit[i].name, cc->omit[i].len));
}

static void
fuzz_one(const char *buf, size_t n)
{
    struct http_response resp;
    struct cache_ctl cc;
    static const char *const names[] = { "cache-control", "cdn-cache-control",
        "pibl-cache-control", "surrogate-control" };

    memset(&resp, 0, sizeof resp);
    if (http_parse_response(buf, n, &resp) != 0)
        return;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        CHECK(freshness_cache_control(resp.headers, resp.n_headers, names[i], &cc) >= 0);
        check_cc(buf, n, &cc);
    }
    const char *used = freshness_targeted(resp.headers, resp.n_headers, &cc);
    check_cc(buf, n, &cc);
    CHECK(used == NULL || http_find_field(resp.headers, resp.n_headers, used) != NULL);
    long age = freshness_age(resp.headers, resp.n_headers);
    CHECK(age == AGE_INVALID || (age >= 0 && age <= 2147483647L));
    time_t when = 0;
    int ex = freshness_expires(resp.headers, resp.n_headers, &when);
    CHECK(ex == EXPIRES_NONE || ex == EXPIRES_AT || ex == EXPIRES_INVALID);
    for (int i = 0; i < resp.n_headers; i++) {
        time_t t = http_parse_date(resp.headers[i].value, resp.headers[i].value_len);
        if (t == -1)
            continue;
        struct tm tm;
        char again[64];
        CHECK(gmtime_r(&t, &tm) != NULL);
        size_t l = strftime(again, sizeof again, "%a, %d %b %Y %H:%M:%S GMT", &tm);
        CHECK(l > 0 && http_parse_date(again, l) == t);
    }
}

#endif

#if FUZZ_WHICH == FUZZ_chunked

enum { DEC_MORE, DEC_DONE, DEC_BAD };

/* What one decoding produced. */
struct decoded {
    int verdict;                   /* DEC_MORE: input ran out, DEC_DONE, DEC_BAD */
    size_t consumed;               /* bytes up to the end of the body (DEC_DONE) */
    std::string data;
};

/*
 * Feed p[0..n) to a fresh decoder in pieces that end at the offsets in
 * cuts[0..n_cuts) (ascending, each < n), then the rest.
 */
static void
decode(const char *p, size_t n, const size_t *cuts, size_t n_cuts, struct decoded *d)
{
    struct http_chunked ck;
    size_t off = 0, c = 0;

    http_chunked_init(&ck);
    d->verdict = DEC_MORE;
    d->consumed = 0;
    d->data.clear();
    while (off < n) {
        size_t end = c < n_cuts ? cuts[c] : n;
        if (end <= off) {
            c++;
            continue;
        }
        /* Feed this piece until it is used up or the body ends. */
        while (off < end) {
            size_t dl = 99999;
            long used = http_chunked_step(&ck, p + off, end - off, &dl);
            if (used == -1) {
                d->verdict = DEC_BAD;
                return;
            }
            CHECK(used > 0 && (size_t)used <= end - off);   /* progress, in bounds */
            CHECK(dl <= (size_t)used);
            if (dl > 0)
                d->data.append(p + off, dl);
            off += (size_t)used;
            if (http_chunked_done(&ck)) {
                d->verdict = DEC_DONE;
                d->consumed = off;
                return;
            }
        }
        c++;
    }
}

static int
hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/*
 * Re-read a body PIBL accepted, trusting its shape: hex size, anything up to
 * CRLF, the data, CRLF; after the zero chunk, lines up to an empty one.
 * Returns 0 with the data and length, -1 when the shape is not there.
 */
static int
reparse(const char *p, size_t n, std::string *data, size_t *len)
{
    size_t i = 0;

    data->clear();
    for (;;) {
        uint64_t size = 0;
        size_t digits = 0;
        while (i < n && hexval((unsigned char)p[i]) >= 0) {   /* PIBL took it: no overflow */
            size = size * 16 + (uint64_t)hexval((unsigned char)p[i++]);
            digits++;
        }
        if (digits == 0)
            return -1;
        while (i + 1 < n && !(p[i] == '\r' && p[i + 1] == '\n'))
            i++;
        if (i + 1 >= n)
            return -1;
        i += 2;
        if (size == 0)
            break;
        if (size > n - i || n - i - size < 2)
            return -1;
        data->append(p + i, (size_t)size);
        i += (size_t)size;
        if (p[i] != '\r' || p[i + 1] != '\n')
            return -1;
        i += 2;
    }
    for (;;) {                                 /* trailer lines, then the empty line */
        size_t start = i;
        while (i + 1 < n && !(p[i] == '\r' && p[i + 1] == '\n'))
            i++;
        if (i + 1 >= n)
            return -1;
        i += 2;
        if (i - start == 2)
            break;
    }
    *len = i;
    return 0;
}

static int
vchar_or_ws(unsigned char c)
{
    return c == ' ' || c == '\t' || (c > 0x20 && c != 0x7f);
}

/*
 * A strict RFC 9112 7.1 decoder (chunk-ext as BWS ";" BWS token
 * [BWS "=" BWS (token / quoted-string)], trailer fields as name ":" value).
 * Returns DEC_DONE with data and the length, DEC_MORE, or DEC_BAD. *in_caps
 * is cleared when the body goes past a cap PIBL documents (15 significant
 * hex digits in at most 64, 1024 bytes of extensions per line,
 * MAX_TRAILER_BYTES of trailers).
 */
static int
strict_decode(const char *p, size_t n, std::string *data, size_t *len, int *in_caps)
{
    size_t i = 0;

#define NEED(k) do { if (i + (k) > n) return DEC_MORE; } while (0)
    data->clear();
    *in_caps = 1;
    for (;;) {
        uint64_t size = 0;
        size_t digits = 0, significant = 0;
        for (;; i++) {
            NEED(1);
            int h = hexval((unsigned char)p[i]);
            if (h < 0)
                break;
            significant += size != 0 || h != 0;
            if (++digits > CK_MAX_SIZE_CHARS || significant > CK_MAX_DIGITS) {
                *in_caps = 0;
                return DEC_BAD;
            }
            size = size * 16 + (uint64_t)h;
        }
        if (digits == 0)
            return DEC_BAD;
        size_t ext_start = i;
        for (;;) {                              /* *( BWS ";" BWS name [ BWS "=" BWS value ] ) */
            size_t save = i;
            for (;; i++) {
                NEED(1);
                if (p[i] != ' ' && p[i] != '\t')
                    break;
            }
            if (p[i] != ';') {
                i = save;
                break;
            }
            i++;
            for (;; i++) {
                NEED(1);
                if (p[i] != ' ' && p[i] != '\t')
                    break;
            }
            size_t name = i;
            for (;; i++) {
                NEED(1);
                if (!tchar((unsigned char)p[i]))
                    break;
            }
            if (i == name)
                return DEC_BAD;
            save = i;
            for (;; i++) {
                NEED(1);
                if (p[i] != ' ' && p[i] != '\t')
                    break;
            }
            if (p[i] != '=') {
                i = save;
                continue;
            }
            i++;
            for (;; i++) {
                NEED(1);
                if (p[i] != ' ' && p[i] != '\t')
                    break;
            }
            if (p[i] == '"') {
                for (i++;; i++) {
                    NEED(1);
                    unsigned char c = (unsigned char)p[i];
                    if (c == '"')
                        break;
                    if (c == '\\') {
                        i++;
                        NEED(1);
                        if (!vchar_or_ws((unsigned char)p[i]))
                            return DEC_BAD;
                    } else if (!vchar_or_ws(c)) {
                        return DEC_BAD;
                    }
                }
                i++;
            } else {
                size_t v = i;
                for (;; i++) {
                    NEED(1);
                    if (!tchar((unsigned char)p[i]))
                        break;
                }
                if (i == v)
                    return DEC_BAD;
            }
        }
        if (i - ext_start > 1000)
            *in_caps = 0;
        NEED(2);
        if (p[i] != '\r' || p[i + 1] != '\n')
            return DEC_BAD;
        i += 2;
        if (size == 0)
            break;
        if (size > n - i)
            return DEC_MORE;
        data->append(p + i, (size_t)size);
        i += (size_t)size;
        NEED(2);
        if (p[i] != '\r' || p[i + 1] != '\n')
            return DEC_BAD;
        i += 2;
    }
    size_t trailer_start = i;
    for (;;) {
        NEED(2);
        if (p[i] == '\r' && p[i + 1] == '\n') {
            i += 2;
            break;
        }
        size_t name = i;
        for (;; i++) {
            NEED(1);
            if (!tchar((unsigned char)p[i]))
                break;
        }
        if (i == name || p[i] != ':')
            return DEC_BAD;
        for (i++;; i++) {
            NEED(1);
            if (!vchar_or_ws((unsigned char)p[i]))
                break;
        }
        NEED(2);
        if (p[i] != '\r' || p[i + 1] != '\n')
            return DEC_BAD;
        i += 2;
    }
#undef NEED
    if (i - trailer_start + 1 > MAX_TRAILER_BYTES)
        *in_caps = 0;
    *len = i;
    return DEC_DONE;
}

static void
same(const struct decoded *a, const struct decoded *b)
{
    CHECK(a->verdict == b->verdict);
    if (a->verdict == DEC_DONE)
        CHECK(a->consumed == b->consumed);
    if (a->verdict != DEC_BAD)
        CHECK(a->data == b->data);
}

static void
fuzz_one(const char *p, size_t n)
{
    struct decoded whole, other;

    decode(p, n, NULL, 0, &whole);
    if (whole.verdict == DEC_DONE) {
        std::string data;
        size_t len = 0;
        CHECK(reparse(p, n, &data, &len) == 0);
        CHECK(len == whole.consumed);
        CHECK(data == whole.data);
    }

    std::string sdata;
    size_t slen = 0;
    int in_caps = 0;
    int sv = strict_decode(p, n, &sdata, &slen, &in_caps);
    if (sv == DEC_DONE && in_caps) {
        CHECK(whole.verdict == DEC_DONE);
        CHECK(whole.consumed == slen);
        CHECK(whole.data == sdata);
    }
    if (sv == DEC_MORE && in_caps)
        CHECK(whole.verdict != DEC_DONE);
    /* And no looser than the grammar: what PIBL accepts, the strict decoder
     * accepts with the same data (chunk extensions included). */
    if (whole.verdict == DEC_DONE) {
        CHECK(sv == DEC_DONE);
        CHECK(slen == whole.consumed);
        CHECK(sdata == whole.data);
    }

    /* Split in two at every position (or at FUZZ_N_SPLITS of them). */
    size_t n_pos = n <= FUZZ_MAX_SPLIT_ALL ? n : FUZZ_N_SPLITS;
    for (size_t k = 1; k < n_pos; k++) {
        size_t cut = n <= FUZZ_MAX_SPLIT_ALL ? k : (size_t)((uint64_t)k * n / FUZZ_N_SPLITS);
        decode(p, n, &cut, 1, &other);
        same(&whole, &other);
    }

    /* A byte at a time. */
    static size_t cuts[1 << 16];
    if (n > 1 && n <= sizeof cuts / sizeof cuts[0]) {
        for (size_t k = 0; k + 1 < n; k++)
            cuts[k] = k + 1;
        decode(p, n, cuts, n - 1, &other);
        same(&whole, &other);
    }
}

#endif

extern "C" int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* libFuzzer's buffer is exactly size bytes: ASan catches any over-read. */
    fuzz_one((const char *)data, size);
    return 0;
}

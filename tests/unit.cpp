/*
 * tests/unit.cpp - table-driven unit tests for the parsers (request head,
 * response head, chunked bodies, Content-Length), the config file, round
 * robin, the access line formats (escaping, dates, cutting) and the
 * freshness fields (Age, Expires and HTTP-dates, Cache-Control, targeted
 * fields) and the kept buffer blocks. Prints one line per failure and ends with "N passed, N failed".
 * Built by `make unit`, also under -fsanitize=address,undefined.
 */
#include "cache.h"
#include "cachepolicy.h"
#include "conditional.h"
#include "conn.h"
#include "exchange.h"
#include "freshness.h"
#include "http.h"
#include "httpdate.h"
#include "log.h"
#include "pibl.h"
#include "rr.h"
#include "sock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int n_passed, n_failed;

#define CHECK(cond, ...) do {                                       \
        if (cond) {                                                 \
            n_passed++;                                             \
        } else {                                                    \
            n_failed++;                                             \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);             \
            printf(__VA_ARGS__);                                    \
            printf("\n");                                           \
        }                                                           \
    } while (0)

/* ------------------------------------------------------------ request heads */

struct req_case {
    const char *head;
    int want;                      /* 0 ok, else the status */
};

static const struct req_case g_req_cases[] = {
    { "GET / HTTP/1.1\r\nHost: a\r\n\r\n", 0 },
    { "GET /x?y=1 HTTP/1.0\r\n\r\n", 0 },
    { "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 0 },            /* leading empty lines */
    { "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", 0 },
    { "GET http://h/p HTTP/1.1\r\nHost: h\r\n\r\n", 0 },
    { "GET / HTTP/1.1\r\nHost:a\r\nX:  v  \r\n\r\n", 0 },
    { "GET / HTTP/1.1\r\nX: caf\xc3\xa9\r\n\r\n", 0 },              /* obs-text */
    { "GET / HTTP/1.2\r\nHost: a\r\n\r\n", 0 },                      /* higher minor */
    { "GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505 },
    { "GET / HTTP/0.9\r\nHost: a\r\n\r\n", 505 },
    { "GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400 },                   /* space before colon */
    { "GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400 },         /* obs-fold */
    { "GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", 400 },                    /* bare CR */
    { "GET / HTTP/1.1\r\nX: a\x01" "b\r\n\r\n", 400 },               /* control byte */
    { "GET / HTTP/1.1\r\nX: a\x7f\r\n\r\n", 400 },                   /* DEL */
    { "GET / HTTP/1.1\r\n: v\r\n\r\n", 400 },                        /* empty name */
    { "GET / HTTP/1.1\r\nX(y): v\r\n\r\n", 400 },                    /* bad name */
    { "GET  / HTTP/1.1\r\n\r\n", 400 },                              /* double space */
    { "GET / HTTP/1.1 \r\n\r\n", 400 },
    { "G\"T / HTTP/1.1\r\n\r\n", 400 },                              /* bad method */
    { "GET /a b HTTP/1.1\r\n\r\n", 400 },
    { "GET / HTTX/1.1\r\n\r\n", 400 },
    { "GET / HTTP/1.x\r\n\r\n", 400 },
    { "GET /\r\n\r\n", 400 },                                        /* HTTP/0.9 form */
    { "GET /0123456789012345678901234567890123456789 HTTP/1.1\r\n\r\n", 414 },
};

static void
test_request_heads(void)
{
    for (size_t i = 0; i < sizeof g_req_cases / sizeof g_req_cases[0]; i++) {
        const struct req_case *c = &g_req_cases[i];
        struct http_request req;
        size_t len = strlen(c->head);
        /* Parse from a heap copy of the exact length so ASan sees overreads. */
        char *copy = (char *)malloc(len);
        memcpy(copy, c->head, len);
        int rc = http_parse_request(copy, len, 32, &req);
        int got = rc == 0 ? 0 : http_error_status(rc);    /* the table lists statuses */
        CHECK(rc <= 0 && got == c->want, "request case %zu: got %d, want %d", i, got, c->want);
        free(copy);
    }

    struct http_request req;
    const char *h = "POST /up HTTP/1.1\r\nHost: example\r\nContent-Length: 5\r\n\r\n";
    CHECK(http_parse_request(h, strlen(h), 8192, &req) == 0, "simple POST");
    CHECK(req.method_len == 4 && memcmp(req.method, "POST", 4) == 0, "method view");
    CHECK(req.target_len == 3 && memcmp(req.target, "/up", 3) == 0, "target view");
    CHECK(req.minor_version == 1 && req.n_headers == 2, "version and header count");
    CHECK(req.headers[1].value_len == 1 && req.headers[1].value[0] == '5', "value view");

    /* More than MAX_HEADERS fields is a 431. */
    char big[MAX_HEADERS * 8 + 64];
    size_t n = (size_t)snprintf(big, sizeof big, "GET / HTTP/1.1\r\n");
    for (int i = 0; i <= MAX_HEADERS; i++)
        n += (size_t)snprintf(big + n, sizeof big - n, "X: 1\r\n");
    n += (size_t)snprintf(big + n, sizeof big - n, "\r\n");
    CHECK(http_parse_request(big, n, 8192, &req) == HTTP_TOO_MANY_FIELDS, "too many fields");

    /* Every byte in a field name: only RFC 9110 tchars parse. */
    for (int b = 1; b < 256; b++) {
        int tchar = (b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z') || (b >= '0' && b <= '9') ||
            (b < 128 && strchr("!#$%&'*+-.^_`|~", b) != NULL);
        char head[64];
        int hl = snprintf(head, sizeof head, "GET / HTTP/1.1\r\nHost: a\r\nX%cY: v\r\n\r\n", b);
        int rc = http_parse_request(head, (size_t)hl, 8192, &req);
        if (b == ':')                           /* name "X", value "Y: v" */
            CHECK(rc == 0 && req.headers[1].name_len == 1, "colon ends the name");
        else
            CHECK((rc == 0) == tchar, "byte 0x%02x in a field name: rc %d", b, rc);
    }

    /* Names compare ignoring ASCII case only. */
    CHECK(http_name_is("Content-LENGTH", 14, "content-length"), "case folded");
    CHECK(!http_name_is("content-lengtH", 13, "content-length"), "length differs");
    CHECK(!http_name_is("x\r", 2, "x-"), "\\r is not '-' in another case");
    CHECK(!http_name_is("a@", 2, "a`"), "@ and ` are not letters");
    CHECK(!http_name_is("[", 1, "{"), "[ and { are not letters");
    CHECK(http_name_is("Proxy-Foo", 9, "proxy-foo"), "mixed case");
    CHECK(http_method_is("GET", 3, "GET") && !http_method_is("get", 3, "GET"), "methods keep their case");
    CHECK(!http_method_is("Head", 4, "HEAD") && !http_method_is("GETX", 4, "GET"), "method case and length");
}

/* ------------------------------------------------------- conditionals */

/* A GET with the given field lines (after Host) into r, the stored head into st.
 * Returns 0, or -1 when either does not parse. */
static int
cond_heads(const char *fields, const char *stored, char *buf, size_t cap, struct http_request *r,
    struct http_response *st)
{
    int n = snprintf(buf, cap, "GET / HTTP/1.1\r\nHost: a\r\n%s\r\n", fields);
    if (n < 0 || (size_t)n >= cap || http_parse_request(buf, (size_t)n, 8192, r) != 0)
        return -1;
    return http_parse_response(stored, strlen(stored), st) == 0 ? 0 : -1;
}

static void
test_conditionals(void)
{
    const char *stored = "HTTP/1.1 200 OK\r\nETag: \"v1\"\r\n"
        "Last-Modified: Wed, 21 Oct 2015 07:28:00 GMT\r\nDate: Wed, 21 Oct 2015 08:00:00 GMT\r\n\r\n";
    static const struct {
        const char *range;                  /* field lines after Host */
        int want;
        uint64_t from, len;
    } cases[] = {
        { "", COND_RANGE_WHOLE, 0, 0 },
        { "Range: bytes=0-99\r\n", COND_RANGE_PART, 0, 100 },
        { "Range: bytes=10-\r\n", COND_RANGE_PART, 10, 990 },
        { "Range: bytes=-10\r\n", COND_RANGE_PART, 990, 10 },
        { "Range: bytes=-5000\r\n", COND_RANGE_PART, 0, 1000 },
        { "Range: bytes=900-5000\r\n", COND_RANGE_PART, 900, 100 },
        { "Range: bytes=1000-\r\n", COND_RANGE_UNSATISFIABLE, 0, 0 },
        { "Range: bytes=-0\r\n", COND_RANGE_UNSATISFIABLE, 0, 0 },
        /* positions past 2^62 (or any length) mean "to the end" or "past it" (RFC 9110 14.1.2) */
        { "Range: bytes=0-99999999999999999999\r\n", COND_RANGE_PART, 0, 1000 },
        { "Range: bytes=990-18446744073709551616\r\n", COND_RANGE_PART, 990, 10 },
        { "Range: bytes=-99999999999999999999999\r\n", COND_RANGE_PART, 0, 1000 },
        { "Range: bytes=99999999999999999999-\r\n", COND_RANGE_UNSATISFIABLE, 0, 0 },
        { "Range: bytes=5-2\r\n", COND_RANGE_WHOLE, 0, 0 },          /* invalid: ignored */
        { "Range: bytes=0-1,5-6\r\n", COND_RANGE_WHOLE, 0, 0 },      /* several: whole */
        { "Range: items=0-1\r\n", COND_RANGE_WHOLE, 0, 0 },
        { "Range: bytes=0-1\r\nRange: bytes=2-3\r\n", COND_RANGE_WHOLE, 0, 0 },
        { "Range: bytes=0-9\r\nIf-Range: \"v1\"\r\n", COND_RANGE_PART, 0, 10 },
        { "Range: bytes=0-9\r\nIf-Range: \"v2\"\r\n", COND_RANGE_WHOLE, 0, 0 },
        { "Range: bytes=0-9\r\nIf-Range: W/\"v1\"\r\n", COND_RANGE_WHOLE, 0, 0 },
        { "Range: bytes=0-9\r\nIf-Range: Wed, 21 Oct 2015 07:28:00 GMT\r\n", COND_RANGE_PART, 0, 10 },
        { "Range: bytes=0-9\r\nIf-Range: Wed, 21 Oct 2015 07:28:01 GMT\r\n", COND_RANGE_WHOLE, 0, 0 },
    };
    char head[512];
    struct http_request r;
    struct http_response st;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint64_t from = 0, len = 0;
        int got = cond_heads(cases[i].range, stored, head, sizeof head, &r, &st) == 0 ?
            cond_range(&r, &st, 1000, &from, &len) : -1;
        CHECK(got == cases[i].want && from == cases[i].from && len == cases[i].len,
            "range case %zu: got %d %llu+%llu", i, got, (unsigned long long)from,
            (unsigned long long)len);
    }

    static const struct { const char *fields; int want; } cur[] = {
        { "", COND_SERVE },
        { "If-None-Match: \"v1\"\r\n", COND_NOT_MODIFIED },
        { "If-None-Match: W/\"v1\"\r\n", COND_NOT_MODIFIED },          /* weak comparison */
        { "If-None-Match: \"x\", \"v1\"\r\n", COND_NOT_MODIFIED },
        { "If-None-Match: *\r\n", COND_NOT_MODIFIED },
        { "If-None-Match: \"v2\"\r\n", COND_SERVE },
        /* all the lines of a list field are one list (RFC 9110 5.3) */
        { "If-None-Match: \"a\"\r\nIf-None-Match: \"v1\"\r\n", COND_NOT_MODIFIED },
        /* If-None-Match wins over If-Modified-Since (RFC 9110 13.1.3). */
        { "If-None-Match: \"v2\"\r\nIf-Modified-Since: Thu, 22 Oct 2015 00:00:00 GMT\r\n", COND_SERVE },
        { "If-Modified-Since: Wed, 21 Oct 2015 07:28:00 GMT\r\n", COND_NOT_MODIFIED },
        { "If-Modified-Since: Wed, 21 Oct 2015 07:27:59 GMT\r\n", COND_SERVE },
        { "If-Modified-Since: yesterday\r\n", COND_SERVE },
        { "If-Modified-Since: Wed, 21 Oct 2015 07:28:00 GMT\r\n"
          "If-Modified-Since: Wed, 21 Oct 2015 07:28:00 GMT\r\n", COND_SERVE },   /* two: ignored */
        /* If-Match and If-Unmodified-Since are the origin's (RFC 9111 4.3.2): not judged here */
        { "If-Match: \"v2\"\r\n", COND_SERVE },
        { "If-Unmodified-Since: Wed, 21 Oct 2015 07:27:59 GMT\r\n", COND_SERVE },
    };
    for (size_t i = 0; i < sizeof cur / sizeof cur[0]; i++)
        CHECK(cond_heads(cur[i].fields, stored, head, sizeof head, &r, &st) == 0 &&
            cond_evaluate(&r, &st, 0) == cur[i].want, "conditional case %zu", i);

    /* Stored answers without validators, with a weak tag, and not a 2xx. */
    static const struct { const char *stored, *fields; time_t received; int want; } more[] = {
        { "HTTP/1.1 200 OK\r\n\r\n", "If-None-Match: *\r\n", 0, COND_NOT_MODIFIED },
        { "HTTP/1.1 200 OK\r\n\r\n", "If-None-Match: \"v1\"\r\n", 0, COND_SERVE },
        /* If-Modified-Since without Last-Modified: the Date, else the time received (RFC 9111 4.3.2) */
        { "HTTP/1.1 200 OK\r\nDate: Wed, 21 Oct 2015 07:28:00 GMT\r\n\r\n",
          "If-Modified-Since: Wed, 21 Oct 2015 07:28:00 GMT\r\n", 0, COND_NOT_MODIFIED },
        { "HTTP/1.1 200 OK\r\nDate: Wed, 21 Oct 2015 07:28:01 GMT\r\n\r\n",
          "If-Modified-Since: Wed, 21 Oct 2015 07:28:00 GMT\r\n", 0, COND_SERVE },
        { "HTTP/1.1 200 OK\r\n\r\n", "If-Modified-Since: Wed, 21 Oct 2015 07:28:00 GMT\r\n",
          1445412480, COND_NOT_MODIFIED },
        { "HTTP/1.1 200 OK\r\n\r\n", "If-Modified-Since: Wed, 21 Oct 2015 07:28:00 GMT\r\n",
          1445412481, COND_SERVE },
        { "HTTP/1.1 200 OK\r\nETag: W/\"v1\"\r\n\r\n", "If-None-Match: \"v1\"\r\n", 0,
          COND_NOT_MODIFIED },
        /* preconditions only where the answer would be a 2xx (RFC 9110 13.2.1) */
        { "HTTP/1.1 404 Not Found\r\nETag: \"v1\"\r\n\r\n", "If-None-Match: \"v1\"\r\n", 0,
          COND_SERVE },
        { "HTTP/1.1 204 No Content\r\nETag: \"v1\"\r\n\r\n", "If-None-Match: \"v1\"\r\n", 0,
          COND_NOT_MODIFIED },
    };
    for (size_t i = 0; i < sizeof more / sizeof more[0]; i++)
        CHECK(cond_heads(more[i].fields, more[i].stored, head, sizeof head, &r, &st) == 0 &&
            cond_evaluate(&r, &st, more[i].received) == more[i].want, "stored case %zu", i);

    /* A Last-Modified date is strong for If-Range only a second or more
     * before the stored Date (RFC 9110 8.8.2.2). */
    static const struct { const char *stored; int want; } weak_date[] = {
        { "HTTP/1.1 200 OK\r\nLast-Modified: Wed, 21 Oct 2015 07:28:00 GMT\r\n"
          "Date: Wed, 21 Oct 2015 07:28:01 GMT\r\n\r\n", COND_RANGE_PART },
        { "HTTP/1.1 200 OK\r\nLast-Modified: Wed, 21 Oct 2015 07:28:00 GMT\r\n"
          "Date: Wed, 21 Oct 2015 07:28:00 GMT\r\n\r\n", COND_RANGE_WHOLE },
        { "HTTP/1.1 200 OK\r\nLast-Modified: Wed, 21 Oct 2015 07:28:00 GMT\r\n\r\n",
          COND_RANGE_WHOLE },
    };
    for (size_t i = 0; i < sizeof weak_date / sizeof weak_date[0]; i++) {
        uint64_t from = 0, len = 0;
        CHECK(cond_heads("Range: bytes=0-9\r\nIf-Range: Wed, 21 Oct 2015 07:28:00 GMT\r\n",
            weak_date[i].stored, head, sizeof head, &r, &st) == 0 &&
            cond_range(&r, &st, 1000, &from, &len) == weak_date[i].want, "if-range date case %zu", i);
    }
}

/* ------------------------------------------------------------ cache keys */

static void
test_cache_key(void)
{
    static const struct { const char *host, *target, *want; } cases[] = {
        { "Example.COM", "/a?b", "http://example.com/a?b" },
        { "example.com:80", "/a", "http://example.com/a" },        /* the default port */
        { "example.com:", "/a", "http://example.com/a" },          /* an empty port */
        { "example.com:8080", "/a", "http://example.com:8080/a" },
        { "[::1]:80", "/", "http://[::1]/" },
        { "example.com", "?q=1", "http://example.com/?q=1" },      /* an empty path is "/" */
        { "example.com", "", "http://example.com/" },
        { "a:800", "/", "http://a:800/" },
    };
    char key[MAX_CACHE_KEY + 1];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int n = cache_key(key, sizeof key, cases[i].host, strlen(cases[i].host), cases[i].target,
            strlen(cases[i].target));
        CHECK(n == (int)strlen(cases[i].want) && strcmp(key, cases[i].want) == 0,
            "cache key case %zu: %s", i, n < 0 ? "-1" : key);
    }
}

/* ------------------------------------------------------------ head ends */

static void
test_head_end(void)
{
    size_t scan = 0;
    const char *a = "GET / HTTP/1.1\r\nHost: a\r\n\r\nNEXT";
    CHECK(http_find_head_end(a, strlen(a), &scan) == (long)strlen(a) - 4, "head end found");

    /* Fed a byte at a time, the end is found exactly once it is complete. */
    scan = 0;
    long got = -2;
    size_t i;
    for (i = 1; i <= strlen(a) && got == -2; i++)
        got = http_find_head_end(a, i, &scan);
    CHECK(got == (long)strlen(a) - 4 && i - 1 == strlen(a) - 4, "incremental head end");

    scan = 0;
    const char *lf = "GET / HTTP/1.1\nHost: a\n\n";
    CHECK(http_find_head_end(lf, strlen(lf), &scan) == -1, "bare LF refused");
    scan = 0;
    const char nul[] = "GET / HTTP/1.1\r\nX: \0\r\n\r\n";
    CHECK(http_find_head_end(nul, sizeof nul - 1, &scan) == -1, "NUL refused");
    scan = 0;
    CHECK(http_find_head_end("GET / HT", 8, &scan) == -2, "incomplete");
    scan = 0;
    const char body_nul[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n\0\0";
    CHECK(http_find_head_end(body_nul, sizeof body_nul - 1, &scan) == (long)sizeof body_nul - 3,
        "NUL in the body after the head is not the head's business");
}

/* ------------------------------------------------------------ response heads */

struct resp_case {
    const char *head;
    int want_status;               /* -1: malformed */
};

static const struct resp_case g_resp_cases[] = {
    { "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 200 },
    { "HTTP/1.0 404 Not Found\r\n\r\n", 404 },
    { "HTTP/1.1 204\r\n\r\n", 204 },                               /* no reason */
    { "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", 103 },
    { "HTTP/1.1 20 OK\r\n\r\n", -1 },
    { "HTTP/1.1 600 X\r\n\r\n", -1 },
    { "HTTP/2 200 OK\r\n\r\n", -1 },
    { "HTTP/1.1 200 OK\r\nX : y\r\n\r\n", -1 },
    { "HTTP/1.1 200 OK\r\nX: y\r\n z\r\n\r\n", -1 },
    { "HTTP/1.1 200 O\x01K\r\n\r\n", -1 },
    { "ICY 200 OK\r\n\r\n", -1 },
};

static void
test_response_heads(void)
{
    for (size_t i = 0; i < sizeof g_resp_cases / sizeof g_resp_cases[0]; i++) {
        const struct resp_case *c = &g_resp_cases[i];
        struct http_response resp;
        size_t len = strlen(c->head);
        char *copy = (char *)malloc(len);
        memcpy(copy, c->head, len);
        int rc = http_parse_response(copy, len, &resp);
        int got = rc == 0 ? resp.status : -1;
        CHECK(got == c->want_status, "response case %zu: got %d, want %d", i, got, c->want_status);
        free(copy);
    }
}

/* ------------------------------------------------------------ chunked */

struct chunk_case {
    const char *wire;
    const char *body;              /* NULL: must be refused */
};

static const struct chunk_case g_chunk_cases[] = {
    { "5\r\nhello\r\n0\r\n\r\n", "hello" },
    { "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "hello world" },
    { "A\r\n0123456789\r\n0\r\n\r\n", "0123456789" },
    { "5;ext=1\r\nhello\r\n0\r\n\r\n", "hello" },
    { "5 ;ext\r\nhello\r\n0\r\n\r\n", "hello" },
    { "5\r\nhello\r\n0\r\nTrailer: x\r\n\r\n", "hello" },
    { "0\r\n\r\n", "" },
    { "-5\r\nhello\r\n0\r\n\r\n", NULL },                            /* sign */
    { "0x5\r\nhello\r\n0\r\n\r\n", NULL },                           /* prefix */
    { "fffffffffffffffff\r\n", NULL },                               /* overflow */
    { "1000000000000000\r\n", NULL },                                /* 16 significant digits */
    { "00000000000000000005\r\nhello\r\n0000\r\n\r\n", "hello" },          /* leading zeros */
    { "5\r\nhelloX\r\n0\r\n\r\n", NULL },                            /* data too long */
    { "5\nhello\r\n0\r\n\r\n", NULL },                               /* bare LF */
    { "5 \r\nhello\r\n0\r\n\r\n", NULL },                            /* BWS without ext */
    { "\r\n", NULL },                                                /* no size */
    { "5\r\nhello\r\n0\r\nBad Trailer\r\n\r\n", NULL },
    /* chunk-ext, RFC 9112 7.1.1: *( BWS ";" BWS name [ BWS "=" BWS value ] ) */
    { "5;a;b=2\r\nhello\r\n0;last\r\n\r\n", "hello" },
    { "5 ; a = b ;c\r\nhello\r\n0\r\n\r\n", "hello" },
    { "5;a=\"x y;\\\"z\"\r\nhello\r\n0\r\n\r\n", "hello" },    /* quoted-string */
    { "5;a=\"x\" ;b\r\nhello\r\n0\r\n\r\n", "hello" },
    { "5;a=\"\xe9\"\r\nhello\r\n0\r\n\r\n", "hello" },           /* obs-text */
    { "5;\r\nhello\r\n0\r\n\r\n", NULL },                            /* no name */
    { "5;bad[=x\r\nhello\r\n0\r\n\r\n", NULL },                      /* name not a token */
    { "5;a=\r\nhello\r\n0\r\n\r\n", NULL },                          /* no value */
    { "5;a=b[\r\nhello\r\n0\r\n\r\n", NULL },                        /* value not a token */
    { "5;a=b c\r\nhello\r\n0\r\n\r\n", NULL },                       /* two tokens */
    { "5;a \r\nhello\r\n0\r\n\r\n", NULL },                          /* BWS before CRLF */
    { "5;a=b \r\nhello\r\n0\r\n\r\n", NULL },
    { "5;a=\"x\r\nhello\r\n0\r\n\r\n", NULL },                      /* unterminated quote */
    { "5;a=\"x\"y\r\nhello\r\n0\r\n\r\n", NULL },                  /* junk after quote */
    { "5;a=\"\x01\"\r\nhello\r\n0\r\n\r\n", NULL },               /* CTL in quote */
    { "5;;a\r\nhello\r\n0\r\n\r\n", NULL },
    { "5;a==b\r\nhello\r\n0\r\n\r\n", NULL },
    { "5;a\x7f\r\nhello\r\n0\r\n\r\n", NULL },
};

/* Decode wire fed in pieces of step bytes; returns 0 with the body, -1. */
static int
decode_chunked(const char *wire, size_t step, char *out, size_t *out_len)
{
    struct http_chunked ck;
    size_t len = strlen(wire), pos = 0, o = 0;

    http_chunked_init(&ck);
    while (pos < len && !http_chunked_done(&ck)) {
        size_t avail = len - pos < step ? len - pos : step;
        size_t dl;
        long used = http_chunked_step(&ck, wire + pos, avail, &dl);
        if (used < 0)
            return -1;
        memcpy(out + o, wire + pos, dl);
        o += dl;
        pos += (size_t)used;
    }
    *out_len = o;
    return http_chunked_done(&ck) ? 0 : -1;
}

static void
test_chunked(void)
{
    for (size_t i = 0; i < sizeof g_chunk_cases / sizeof g_chunk_cases[0]; i++) {
        const struct chunk_case *c = &g_chunk_cases[i];
        for (size_t step = 1; step <= 64; step *= 4) {
            char out[256];
            size_t ol = 0;
            int rc = decode_chunked(c->wire, step, out, &ol);
            if (c->body == NULL)
                CHECK(rc == -1, "chunk case %zu step %zu: accepted bad framing", i, step);
            else
                CHECK(rc == 0 && ol == strlen(c->body) && memcmp(out, c->body, ol) == 0,
                    "chunk case %zu step %zu: rc %d len %zu", i, step, rc, ol);
        }
    }
    /* The decoder stops at the end of the body and leaves what follows. */
    struct http_chunked ck;
    const char *w = "0\r\n\r\nGET";
    size_t dl;
    http_chunked_init(&ck);
    CHECK(http_chunked_step(&ck, w, strlen(w), &dl) == 5 && http_chunked_done(&ck),
        "stops at the end of the message");
}

static void
test_content_length(void)
{
    CHECK(http_parse_content_length("0", 1) == 0, "CL 0");
    CHECK(http_parse_content_length("12345", 5) == 12345, "CL 12345");
    CHECK(http_parse_content_length("+5", 2) == -1, "CL sign");
    CHECK(http_parse_content_length("-5", 2) == -1, "CL negative");
    CHECK(http_parse_content_length("5 5", 3) == -1, "CL inner space");
    CHECK(http_parse_content_length("5,5", 3) == -1, "CL list");
    CHECK(http_parse_content_length("", 0) == -1, "CL empty");
    CHECK(http_parse_content_length("99999999999999999999", 20) == -1, "CL overflow");
    CHECK(http_parse_content_length("0x10", 4) == -1, "CL hex");
    CHECK(http_parse_content_length("005", 3) == 5, "CL leading zeros: decimal, not octal");
    CHECK(http_parse_content_length("0200", 4) == 200, "CL 0200 is 200");
    CHECK(http_parse_content_length("000", 3) == 0, "CL all zeros");
    CHECK(http_parse_content_length("0000000000000000000000042", 25) == 42, "CL many leading zeros");
    CHECK(http_parse_content_length("09999999999999999999", 20) == -1, "CL overflow after zeros");

    /* Forwarded in canonical form; other fields as received. */
    char out[128];
    struct http_builder b = { out, sizeof out, 0, 0 };
    struct http_header cl = { "content-length", 14, "0200", 4 };
    struct http_header x = { "X-Count", 7, "0200", 4 };
    http_put_forward(&b, &cl);
    http_put_forward(&b, &x);
    const char *want = "Content-Length: 200\r\nX-Count: 0200\r\n";
    CHECK(b.len == strlen(want) && memcmp(out, want, b.len) == 0,
        "forwarded CL canonical: %.*s", (int)b.len, out);
}

/* Field names that a CGI gateway would read as a framing or routing field. */
static void
test_lookalikes(void)
{
    static const struct { const char *name; int want; } cases[] = {
        { "Content_Length", 1 }, { "content_length", 1 }, { "Transfer_Encoding", 1 },
        { "TRANSFER_ENCODING", 1 }, { "X_Forwarded_For", 1 }, { "X-Forwarded_For", 1 },
        { "X_Forwarded_Host", 1 }, { "X_Real_IP", 1 }, { "Proxy_Connection", 1 },
        { "Content-Length", 0 }, { "Transfer-Encoding", 0 }, { "X_Custom", 0 },
        { "Content__Length", 0 }, { "Content_Length_", 0 }, { "Host", 0 }, { "", 0 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        CHECK(http_is_lookalike(cases[i].name, strlen(cases[i].name)) == cases[i].want,
            "lookalike %s", cases[i].name);
}

/* ------------------------------------------------------------ config */

/* Write text to a temp file and load it; returns the load result. */
static int
load_bytes(const char *text, size_t len, struct pibl_config *cfg, char *err, size_t err_len)
{
    char path[] = "/tmp/pibl-unit-XXXXXX";
    int fd = mkstemp(path);
    if (fd == -1)
        return -99;
    if (write(fd, text, len) != (ssize_t)len) {
        close(fd);
        return -99;
    }
    close(fd);
    int rc = pibl_config_load(path, cfg, err, err_len);
    unlink(path);
    return rc;
}

static int
load_text(const char *text, struct pibl_config *cfg, char *err, size_t err_len)
{
    return load_bytes(text, strlen(text), cfg, err, err_len);
}

struct cfg_case {
    const char *text;
    const char *want_err;          /* NULL: must load; else a substring of the error */
};

static const struct cfg_case g_cfg_cases[] = {
    { "backend = 127.0.0.1:8081\n", NULL },
    { "# c\n\n  port = 9000  # trailing\nbackend = localhost:80\n", NULL },
    { "backend = [::1]:8081\nlisten = ::\n", NULL },
    { "port = 8080\n", "no backend" },
    { "prot = 8080\nbackend = 127.0.0.1:1\n", ":1: unknown key \"prot\"" },
    { "backend = 127.0.0.1:1\nport = 70000\n", ":2: port" },
    { "backend = 127.0.0.1:1\nport = 80x\n", ":2: port" },
    { "backend = 127.0.0.1:1\nport =\n", ":2: port: missing value" },
    { "backend = 127.0.0.1:1\njust words\n", ":2: expected" },
    { "backend = 127.0.0.1\n", ":1: backend" },
    { "backend = 127.0.0.1:0\n", ":1: backend" },
    { "backend = no-such-host.invalid:80\n", ":1: backend" },
    { "backend = 127.0.0.1:1\nupstream_keepalive = maybe\n", ":2: upstream_keepalive" },
    { "backend = 127.0.0.1:1\nunderscores_in_headers = yes please\n", ":2: underscores_in_headers" },
    { "backend = 127.0.0.1:1\nport = 1\nport = 2\n", ":3: port set twice" },
    { "backend = 127.0.0.1:1\nlisten = 1.2.3\n", ":2: listen" },
    { "backend = 127.0.0.1:1 weight=101\n", ":1: backend" },
    { "backend = 127.0.0.1:1\nhealth_check = healthz\n", ":2: health_check" },
    { "backend = 127.0.0.1:1 weight=3\nhealth_check = /healthz\nadmin_port = 0\n", NULL },
    { "backend = 127.0.0.1:1\nlog_format = json\nerror_log = /tmp/e.log\n", NULL },
    { "backend = 127.0.0.1:1\nlog_format = Combined\n",
      ":2: log_format: \"Combined\" must be pibl, combined or json" },
    { "backend = 127.0.0.1:1\nerror_log =\n", ":2: error_log: missing value" },
    { "backend = 127.0.0.1:1\nadmin_listen = nope\n",
      ":2: admin_listen: \"nope\" is not an IPv4 or IPv6 address" },
    { "backend = 127.0.0.1:1\nhealth_check = /a b\n", ":2: health_check: \"/a b\" must be a path starting "
      "with /, without blanks" },
};

static void
test_config(void)
{
    struct pibl_config cfg;
    char err[1024];

    for (size_t i = 0; i < sizeof g_cfg_cases / sizeof g_cfg_cases[0]; i++) {
        const struct cfg_case *c = &g_cfg_cases[i];
        err[0] = '\0';
        int rc = load_text(c->text, &cfg, err, sizeof err);
        if (c->want_err == NULL)
            CHECK(rc == 0, "config case %zu should load: %s", i, err);
        else
            CHECK(rc == -1 && strstr(err, c->want_err) != NULL,
                "config case %zu: got \"%s\", want \"%s\"", i, err, c->want_err);
    }

    CHECK(load_text("backend = 127.0.0.1:1\n", &cfg, err, sizeof err) == 0, "defaults load");
    CHECK(cfg.port == 8080 && strcmp(cfg.log_file, "pibl.log") == 0 &&
        strcmp(cfg.cache_dir, "cache") == 0 && cfg.upstream_keepalive == 1 &&
        cfg.underscores_in_headers == 0, "documented defaults");
    CHECK(load_text("backend = 127.0.0.1:1\nbackend = 127.0.0.1:2\nmax_body_bytes = 0\n"
        "log_headers = on\nunderscores_in_headers = on\n", &cfg, err, sizeof err) == 0 &&
        cfg.n_backends == 2 && cfg.max_body_bytes == 0 && cfg.log_headers == 1 &&
        cfg.underscores_in_headers == 1, "values applied");
    CHECK(cfg.log_format == LOG_FORMAT_PIBL && cfg.error_log[0] == '\0', "log defaults");
    CHECK(load_text("backend = 127.0.0.1:1\nlog_format = combined\nerror_log = stdout\n", &cfg, err,
        sizeof err) == 0 && cfg.log_format == LOG_FORMAT_COMBINED &&
        strcmp(cfg.error_log, "stdout") == 0, "log keys applied");
    CHECK(pibl_config_load("/nonexistent/pibl.cfg", &cfg, err, sizeof err) == -1 &&
        strstr(err, "/nonexistent/pibl.cfg") != NULL, "missing file named");

    /* A NUL byte anywhere in a line is an error, not the end of the line. */
    static const char nul[] = "backend = 127.0.0.1:1\nport = 8\0" "0\n";
    CHECK(load_bytes(nul, sizeof nul - 1, &cfg, err, sizeof err) == -1 &&
        strstr(err, ":2: NUL byte in line") != NULL, "NUL byte: %s", err);
    /* MAX_CONFIG_LINE bytes, with LF or CRLF, fit; one more does not. */
    char text[MAX_CONFIG_LINE + 64];
    for (int crlf = 0; crlf <= 1; crlf++) {
        for (int extra = 0; extra <= 1; extra++) {
            int n = snprintf(text, sizeof text, "backend = 127.0.0.1:1\n# ");
            memset(text + n, 'x', (size_t)(MAX_CONFIG_LINE - 2 + extra));
            n += MAX_CONFIG_LINE - 2 + extra;
            n += snprintf(text + n, sizeof text - (size_t)n, crlf ? "\r\n" : "\n");
            int rc = load_bytes(text, (size_t)n, &cfg, err, sizeof err);
            CHECK(extra ? rc == -1 && strstr(err, ":2: line longer than") != NULL : rc == 0,
                "line of %d bytes + %s: rc %d %s", MAX_CONFIG_LINE + extra, crlf ? "CRLF" : "LF", rc, err);
        }
    }
}

/* ------------------------------------------------------------ round robin */

/* Load a config from text and make its backends the live rotation. */
static int
configure_text(const char *text, struct pibl_config *cfg)
{
    char err[512];
    struct rr_changes ch;

    if (load_text(text, cfg, err, sizeof err) != 0) {
        printf("config: %s\n", err);
        return -1;
    }
    return rr_configure(cfg, &ch);
}

/* The next n picks as a string of slot digits. */
static void
picks(char *out, int n)
{
    for (int i = 0; i < n; i++)
        out[i] = (char)('0' + rr_next(0));
    out[n] = '\0';
}

static void
test_round_robin(void)
{
    static struct pibl_config cfg;
    char seq[64];

    CHECK(configure_text("down_time = 60\nbackend = 127.0.0.1:1\nbackend = 127.0.0.1:2\n"
        "backend = 127.0.0.1:3\n", &cfg) == 0, "configure three backends");
    socklen_t alen = 0;
    CHECK(rr_addr(0, 0, &alen) != NULL && alen > 0 && rr_addr(0, 1, &alen) == NULL,
        "a literal address gives one address to try");
    picks(seq, 6);
    CHECK(strcmp(seq, "012012") == 0, "strict order, got %s", seq);

    rr_mark_down(1, "test");
    picks(seq, 4);
    CHECK(strcmp(seq, "0202") == 0, "down backend skipped, turns shared, got %s", seq);
    CHECK(rr_next(1 | 4) == -1, "tried + down: none left");
    rr_mark_up(1);
    CHECK(rr_next(1 | 4) == 1, "marked up again");
    rr_set_health(2, 1);
    CHECK(rr_is_down(2) && rr_others_up(2) == 2, "health mark counts as down");
    rr_set_health(2, 0);

    /* Down, then back: the cycle goes on in config order (no drift). */
    CHECK(configure_text("down_time = 60\nbackend = 127.0.0.1:1\nbackend = 127.0.0.1:2\n"
        "backend = 127.0.0.1:3\n", &cfg) == 0, "configure three backends again");
    picks(seq, 3);
    rr_mark_down(1, "test");
    picks(seq + 3, 3);
    rr_mark_up(1);
    picks(seq + 6, 6);
    CHECK(strcmp(seq, "012020" "120120") == 0, "order after a backend came back, got %s", seq);
    rr_set_health(0, 1);
    picks(seq, 4);
    rr_set_health(0, 0);
    picks(seq + 4, 3);
    CHECK(strcmp(seq, "1212" "012") == 0, "order after a health mark, got %s", seq);

    /* Weights: 5 1 1 spreads smoothly, 7 picks per cycle, no burst of 5. */
    CHECK(configure_text("backend = 127.0.0.1:1 weight=5\nbackend = 127.0.0.1:2\n"
        "backend = 127.0.0.1:3 weight=1\n", &cfg) == 0, "configure weights");
    picks(seq, 14);
    int count[3] = { 0, 0, 0 };
    for (int i = 0; i < 14; i++)
        count[seq[i] - '0']++;
    CHECK(count[0] == 10 && count[1] == 2 && count[2] == 2, "weights 5:1:1, got %s", seq);
    /* nginx's smooth order for 5 1 1 is a a b a c a a, not a a a a a b c. */
    CHECK(strncmp(seq, "0010200", 7) == 0, "smooth order, got %s", seq);

    /* A heavy backend down: the light one gets every turn (the bounded search). */
    CHECK(configure_text("down_time = 60\nbackend = 127.0.0.1:1 weight=100\n"
        "backend = 127.0.0.1:2 weight=100\nbackend = 127.0.0.1:3 weight=1\n", &cfg) == 0,
        "configure heavy weights");
    rr_mark_down(0, "test");
    rr_mark_down(1, "test");
    picks(seq, 5);
    CHECK(strcmp(seq, "22222") == 0, "only the light backend is up, got %s", seq);
    rr_mark_down(2, "test");
    CHECK(rr_next(0) == -1, "all down: none");
    for (int i = 0; i < 3; i++)
        rr_mark_up(i);

    /* Reload: a kept name keeps its slot; a removed one leaves rotation. */
    CHECK(configure_text("backend = 127.0.0.1:3\nbackend = 127.0.0.1:9\n", &cfg) == 0,
        "reconfigure");
    CHECK(rr_count() == 2 && strcmp(rr_name(2), "127.0.0.1:3") == 0 && !rr_is_active(0) &&
        !rr_is_active(1), "slots after reload");
    picks(seq, 4);
    CHECK(strchr(seq, '0') == NULL && strchr(seq, '1') == NULL, "removed slots unused, got %s", seq);

    CHECK(configure_text("down_time = 0\nbackend = 127.0.0.1:1\n", &cfg) == 0, "down_time 0");
    int s0 = rr_next(0);
    rr_mark_down(s0, "test");
    CHECK(!rr_is_down(s0), "down_time 0 never skips");

    CHECK(configure_text("backend = 127.0.0.1:1 wait=2\n", &cfg) == -1, "bad option refused");
}

/* Named backends, drain (config and run time), the changes a reload counts. */
static void
test_backend_admin(void)
{
    static struct pibl_config cfg;
    struct rr_changes ch;
    char seq[64], err[512];

    CHECK(load_text("backend = web1 127.0.0.1:1 weight=3\nbackend = 127.0.0.1:2 drain\n"
        "backend = web3 127.0.0.1:3 weight=0\n", &cfg, err, sizeof err) == 0, "names: %s", err);
    CHECK(strcmp(cfg.backends[0].name, "web1") == 0 && strcmp(cfg.backends[0].address,
        "127.0.0.1:1") == 0 && cfg.backends[0].weight == 3 && !cfg.backends[0].drain,
        "a named backend keeps its address apart");
    CHECK(strcmp(cfg.backends[1].name, "127.0.0.1:2") == 0 && cfg.backends[1].drain,
        "no name: host:port; drain flag");
    CHECK(cfg.backends[2].drain && cfg.backends[2].weight == 0, "weight=0 drains");
    static const char *const bad[] = {
        "backend = web1 127.0.0.1:1\nbackend = web1 127.0.0.1:2\n",     /* name twice */
        "backend = 127.0.0.1:1\nbackend = 127.0.0.1:1\n",               /* address twice, no names */
        "backend = web/1 127.0.0.1:1\n",                                 /* a bad name */
        "backend = web1\n",                                              /* no address */
        "backend = web1 127.0.0.1:1 drain drain\n",
        "backend = web1 127.0.0.1:1 weight=101\n",
        "backend = web1 web2 127.0.0.1:1\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK(load_text(bad[i], &cfg, err, sizeof err) == -1 && strstr(err, "backend") != NULL,
            "refused: %s", bad[i]);

    CHECK(configure_text("backend = a 127.0.0.1:1\nbackend = b 127.0.0.1:2 drain\n"
        "backend = c 127.0.0.1:3\n", &cfg) == 0, "configure a, b (drain), c");
    int a = rr_find("a"), b = rr_find("b"), c = rr_find("c");
    CHECK(a >= 0 && b >= 0 && c >= 0 && rr_find("d") == -1, "rr_find by name");
    for (int i = 0; i < 6; i++)
        seq[i] = rr_next(0) == b ? 'b' : 'x';
    CHECK(memchr(seq, 'b', 6) == NULL, "a drained backend gets no request");
    CHECK(rr_others_up(a) == 1, "a drained backend does not count as up");
    rr_set_admin(b, RR_ADMIN_READY, "test");
    int got_b = 0;
    for (int i = 0; i < 6; i++)
        got_b += rr_next(0) == b;
    CHECK(got_b == 2, "enabled by hand: its turns again, got %d of 6", got_b);
    rr_set_admin(a, RR_ADMIN_MAINT, "test");
    CHECK(rr_is_maint(a), "disabled");
    for (int i = 0; i < 6; i++)
        CHECK(rr_next(0) != a, "a disabled backend gets no request");
    struct rr_stats st;
    rr_stats(a, &st);
    CHECK(st.state == RR_MAINT && strcmp(st.name, "a") == 0 && strcmp(st.address, "127.0.0.1:1") == 0,
        "stats: state maint, name and address");
    rr_set_admin(c, RR_ADMIN_DRAIN, "test");
    rr_stats(c, &st);
    CHECK(st.state == RR_DRAIN, "drained by hand");
    CHECK(rr_next(0) == b && rr_next(0) == b, "only b left");

    /* A reload keeps run-time states of unchanged lines, clears changed ones. */
    CHECK(load_text("backend = a 127.0.0.1:1\nbackend = b 127.0.0.1:2\nbackend = c 127.0.0.1:3\n"
        "backend = d 127.0.0.1:4\n", &cfg, err, sizeof err) == 0, "reload text");
    CHECK(rr_configure(&cfg, &ch) == 0 && ch.added == 1 && ch.removed == 0 && ch.changed == 1,
        "added 1 (d), changed 1 (b lost drain): %d %d %d", ch.added, ch.removed, ch.changed);
    CHECK(rr_is_maint(a), "unchanged line: still disabled");
    rr_stats(b, &st);
    CHECK(st.state == RR_UP && st.admin == RR_ADMIN_NONE, "changed line: back to the file's word");
    CHECK(load_text("backend = a 127.0.0.1:1\nbackend = c 127.0.0.1:9\n", &cfg, err, sizeof err) == 0,
        "reload text 2");
    CHECK(rr_configure(&cfg, &ch) == 0 && ch.added == 0 && ch.removed == 2 && ch.changed == 1,
        "removed b and d, c moved: %d %d %d", ch.added, ch.removed, ch.changed);
    CHECK(strcmp(ch.names[1], "b d") == 0 && strcmp(ch.names[2], "c") == 0 && ch.names[0][0] == '\0',
        "the reload's names: removed \"%s\", changed \"%s\"", ch.names[1], ch.names[2]);
    int flushed_c = 0;
    for (int i = 0; i < ch.n_removed_slots; i++)
        flushed_c |= ch.removed_slots[i] == c;
    CHECK(flushed_c && ch.n_removed_slots == 3, "a moved backend's idle connections go too");

    /* Answers by class, bytes, probes. */
    rr_answered(c, 204, 10, 20);
    rr_answered(c, 503, 5, 0);
    rr_check_result(c, 0, "health check: refused");
    rr_stats(c, &st);
    CHECK(st.answers[0] == 1 && st.answers[3] == 1 && st.bytes_in == 15 && st.bytes_out == 20,
        "answers by class and bytes");
    CHECK(st.check_failures == 1 && !st.check_ok && st.check_at > 0 &&
        strcmp(st.check_detail, "health check: refused") == 0, "last probe kept");
}

/* ------------------------------------------------------------ field lists */

/* Parse head into req (a test's own request); returns 0 or the parser's error. */
static int
parse_into(const char *head, struct http_request *req)
{
    return http_parse_request(head, strlen(head), 8192, req);
}

static void
test_field_lists(void)
{
    struct http_request req;
    const struct http_header *h = NULL;

    /* One return convention: counts, 0, -1 or a named error. */
    CHECK(http_error_status(HTTP_MALFORMED) == 400 && http_error_status(HTTP_URI_TOO_LONG) == 414 &&
        http_error_status(HTTP_TOO_MANY_FIELDS) == 431 && http_error_status(HTTP_BAD_VERSION) == 505 &&
        http_error_status(HTTP_UNSUPPORTED) == 501, "error statuses");
    CHECK(parse_into("GET / HTTP/2.0\r\nHost: a\r\n\r\n", &req) == HTTP_BAD_VERSION, "HTTP/2 head");
    CHECK(parse_into("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nX: 1\r\n\r\n", &req) == 0, "parsed");
    CHECK(http_find_single(req.headers, req.n_headers, "host", &h) == 2 && h == &req.headers[0],
        "two Host fields counted, the first returned");
    CHECK(http_find_single(req.headers, req.n_headers, "x", &h) == 1 && h == &req.headers[2], "one X");
    CHECK(http_find_single(req.headers, req.n_headers, "via", &h) == 0, "no Via");

    static const struct { const char *te; int want; } te_cases[] = {
        { "chunked", 0 },
        { "gzip, chunked", HTTP_UNSUPPORTED },
        { "chunked, gzip", HTTP_MALFORMED },
        { "chunked, chunked", HTTP_MALFORMED },
        { "gzip", HTTP_UNSUPPORTED },
        { "", HTTP_MALFORMED },
    };
    for (size_t i = 0; i < sizeof te_cases / sizeof te_cases[0]; i++) {
        struct http_header f = { "Transfer-Encoding", 17, te_cases[i].te, strlen(te_cases[i].te) };
        int rc = http_check_transfer_coding(&f, 1);
        CHECK(rc == te_cases[i].want, "Transfer-Encoding \"%s\": got %d, want %d", te_cases[i].te, rc,
            te_cases[i].want);
    }
}

/* ------------------------------------------------------------ cache decisions */

/* The exchange for one request head, as exchange_check_request leaves it. */
static int
plan_for(const char *head, struct exchange *x)
{
    static struct pibl_config cfg;
    int status;
    const char *why, *host, *path;
    size_t host_len, path_len;
    struct http_tokens ct;

    pibl_config_defaults(&cfg);
    exchange_reset(x);
    if (parse_into(head, &x->req) != 0 ||
        exchange_check_request(&cfg, x, &status, &why, &host, &host_len, &path, &path_len, &ct) == -1)
        return -1;
    return cachepolicy_plan(x, host, host_len, path, path_len);
}

static void
test_cache_decisions(void)
{
    static struct exchange x;       /* large: not on the stack */
    struct cache_entry e;

    CHECK(plan_for("GET /a HTTP/1.1\r\nHost: h\r\n\r\n", &x) == PLAN_LOOKUP && x.store_ok &&
        x.key_len > 0 && strcmp(x.key, "http://h/a") == 0, "GET: look up, may store, key");
    CHECK(plan_for("HEAD /a HTTP/1.1\r\nHost: h\r\n\r\n", &x) == PLAN_LOOKUP && !x.store_ok,
        "HEAD: look up, never stores");
    CHECK(plan_for("POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\n", &x) == PLAN_FORWARD &&
        x.invalidate && strcmp(x.cs_fwd, "method") == 0, "POST: forward and invalidate");
    CHECK(plan_for("PURGE /a HTTP/1.1\r\nHost: h\r\n\r\n", &x) == PLAN_PURGE, "PURGE");
    CHECK(plan_for("GET /a HTTP/1.1\r\nHost: h\r\nCache-Control: no-store\r\n\r\n", &x) ==
        PLAN_FORWARD && !x.store_ok && strcmp(x.cs_fwd, "request") == 0, "no-store request");
    CHECK(plan_for("GET /a HTTP/1.1\r\nHost: h\r\nPragma: no-cache\r\n\r\n", &x) == PLAN_LOOKUP &&
        x.must_ask && x.store_ok, "Pragma: no-cache without Cache-Control: revalidate what is stored");
    CHECK(plan_for("GET /a HTTP/1.1\r\nHost: h\r\nCache-Control: no-cache\r\n\r\n", &x) ==
        PLAN_LOOKUP && x.must_ask, "no-cache request: revalidate what is stored");
    CHECK(plan_for("GET /a HTTP/1.1\r\nHost: h\r\nPragma: no-cache\r\nCache-Control: max-age=5\r\n\r\n",
        &x) == PLAN_LOOKUP && !x.must_ask, "Pragma is ignored beside Cache-Control (RFC 9111 5.4)");
    CHECK(plan_for("M-SEARCH /a HTTP/1.1\r\nHost: h\r\n\r\n", &x) == PLAN_FORWARD && x.invalidate,
        "an unknown method invalidates");
    CHECK(plan_for("QUERY /a HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\n", &x) == PLAN_FORWARD &&
        !x.invalidate, "QUERY is safe");
    CHECK(plan_for("GET /a HTTP/1.0\r\n\r\n", &x) == PLAN_FORWARD && x.key_len == 0,
        "no Host: no key");

    /* One freshness and Vary rule for both paths. */
    CHECK(plan_for("GET /a HTTP/1.1\r\nHost: h\r\nAccept-Language: es\r\n\r\n", &x) == PLAN_LOOKUP,
        "varying request");
    memset(&e, 0, sizeof e);
    e.fresh = 1;
    snprintf(e.vary, sizeof e.vary, "accept-language=es\n");
    CHECK(cachepolicy_judge(&x, &e) == ENTRY_FRESH, "same variant, fresh");
    e.fresh = 0;
    CHECK(cachepolicy_judge(&x, &e) == ENTRY_STALE, "same variant, expired");
    snprintf(e.vary, sizeof e.vary, "accept-language=en\n");
    CHECK(cachepolicy_judge(&x, &e) == ENTRY_OTHER_VARIANT, "other variant");
    e.vary[0] = '\0';
    e.fresh = 1;
    CHECK(cachepolicy_judge(&x, &e) == ENTRY_FRESH, "no Vary");
}

/* ------------------------------------------------------------ access lines */

/* One exchange with every field, at 2025-11-27T02:41:42.682Z. */
static void
sample_access(struct log_access *a, const char *const *tried)
{
    memset(a, 0, sizeof *a);
    a->client = "127.0.0.1:60556";
    a->client_ip = "127.0.0.1";
    a->method = "GET";
    a->target = "/a\"b\\c";
    a->host = "example.com";
    a->backend = "web2";
    a->minor = 1;
    a->status = 502;
    a->bytes = 1124;
    a->us = 520;
    a->cache = "MISS";
    a->ua = "Mozilla/5.0 \"q\"\t\x01\xc3\xa9";
    a->referer = NULL;
    a->tried = tried;
    a->n_tried = 2;
    a->err = "backend unreachable";
}

/* Format a in format into out (NUL-terminated). */
static void
format_line(int format, const struct log_access *a, char *out, size_t cap)
{
    struct timespec now = { 1764211302, 682000000 };   /* 2025-11-27T02:41:42.682Z */
    size_t n = log_format_access(format, a, &now, out, cap - 1);

    out[n] = '\0';
}

static void
test_access_lines(void)
{
    const char *tried[] = { "web1", "web2" };
    struct log_access a;
    char line[LOG_LINE_MAX];

    sample_access(&a, tried);
    format_line(LOG_FORMAT_PIBL, &a, line, sizeof line);
    CHECK(strcmp(line, "2025-11-27T02:41:42.682Z 127.0.0.1:60556 \"GET /a?b?c HTTP/1.1\" "
        "host=example.com backend=web2 status=502 bytes=1124 ms=0.52 cache=MISS "
        "ua=\"Mozilla/5.0 ?q?????\" ref=\"-\" tried=web1,web2 err=\"backend unreachable\"") == 0,
        "pibl line: %s", line);
    format_line(LOG_FORMAT_COMBINED, &a, line, sizeof line);
    CHECK(strcmp(line, "127.0.0.1 - - [27/Nov/2025:02:41:42 +0000] \"GET /a\\\"b\\\\c HTTP/1.1\" "
        "502 1124 \"-\" \"Mozilla/5.0 \\\"q\\\"\\x09\\x01\\xc3\\xa9\"") == 0,
        "combined line: %s", line);
    format_line(LOG_FORMAT_JSON, &a, line, sizeof line);
    CHECK(strcmp(line, "{\"time\":\"2025-11-27T02:41:42.682Z\",\"client\":\"127.0.0.1:60556\","
        "\"method\":\"GET\",\"target\":\"/a\\\"b\\\\c\",\"protocol\":\"HTTP/1.1\","
        "\"host\":\"example.com\",\"backend\":\"web2\",\"status\":502,\"bytes\":1124,\"ms\":0.52,"
        "\"cache\":\"MISS\",\"ua\":\"Mozilla/5.0 \\\"q\\\"\\t\\u0001\\u00c3\\u00a9\",\"referer\":null,"
        "\"tried\":[\"web1\",\"web2\"],\"err\":\"backend unreachable\"}") == 0,
        "json line: %s", line);

    /* A refused request line: its own protocol, or none, never an invented HTTP/1.x. */
    sample_access(&a, tried);
    a.target = "/";
    a.proto = "HTTP/2.0";
    format_line(LOG_FORMAT_COMBINED, &a, line, sizeof line);
    CHECK(strstr(line, "\"GET / HTTP/2.0\" 502 ") != NULL, "combined, own protocol: %s", line);
    format_line(LOG_FORMAT_JSON, &a, line, sizeof line);
    CHECK(strstr(line, "\"protocol\":\"HTTP/2.0\"") != NULL, "json, own protocol: %s", line);
    a.proto = "";
    format_line(LOG_FORMAT_PIBL, &a, line, sizeof line);
    CHECK(strstr(line, " \"GET /\" host=") != NULL, "pibl, no protocol: %s", line);
    format_line(LOG_FORMAT_COMBINED, &a, line, sizeof line);
    CHECK(strstr(line, "\"GET /\" 502 ") != NULL, "combined, no protocol: %s", line);
    format_line(LOG_FORMAT_JSON, &a, line, sizeof line);
    CHECK(strstr(line, "\"protocol\":null") != NULL, "json, no protocol: %s", line);
    sample_access(&a, tried);

    /* One backend that answered: pibl says no tried=; a tunnel has up=. */
    a.status = 101;
    a.tunnel = 1;
    a.up_bytes = 77;
    a.n_tried = 1;
    a.err = NULL;
    format_line(LOG_FORMAT_PIBL, &a, line, sizeof line);
    CHECK(strstr(line, " status=101 bytes=1124 up=77 ms=") != NULL && strstr(line, "tried=") == NULL &&
        strstr(line, "err=") == NULL, "pibl tunnel line: %s", line);
    format_line(LOG_FORMAT_JSON, &a, line, sizeof line);
    CHECK(strstr(line, "\"bytes\":1124,\"up_bytes\":77,\"ms\"") != NULL &&
        strstr(line, "\"tried\":[\"web1\"],\"err\":null}") != NULL, "json tunnel line: %s", line);

    /* Nothing read: every field absent. */
    memset(&a, 0, sizeof a);
    a.client = "[::1]:5";
    a.client_ip = "::1";
    a.minor = 1;
    a.status = 400;
    a.cache = "-";
    format_line(LOG_FORMAT_PIBL, &a, line, sizeof line);
    CHECK(strcmp(line, "2025-11-27T02:41:42.682Z [::1]:5 \"- - HTTP/1.1\" host=- backend=- status=400 "
        "bytes=0 ms=0.00 cache=- ua=\"-\" ref=\"-\"") == 0, "pibl empty: %s", line);
    format_line(LOG_FORMAT_COMBINED, &a, line, sizeof line);
    CHECK(strcmp(line, "::1 - - [27/Nov/2025:02:41:42 +0000] \"-\" 400 0 \"-\" \"-\"") == 0,
        "combined empty: %s", line);
    format_line(LOG_FORMAT_JSON, &a, line, sizeof line);
    CHECK(strstr(line, "\"method\":null,\"target\":null,\"protocol\":null,\"host\":null,"
        "\"backend\":null,\"status\":400,\"bytes\":0,\"ms\":0.00,\"cache\":null,\"ua\":null,"
        "\"referer\":null,\"tried\":[],\"err\":null}") != NULL, "json empty: %s", line);

    /* Fields far too long once escaped: cut with "...", the line still whole. */
    static char big[3000];
    memset(big, '"', sizeof big - 1);
    sample_access(&a, tried);
    a.target = a.ua = a.referer = big;
    format_line(LOG_FORMAT_JSON, &a, line, sizeof line);
    size_t n = strlen(line);
    CHECK(n < sizeof line - 1 && strstr(line, "...\"") != NULL &&
        strcmp(line + n - 52, "\"tried\":[\"web1\",\"web2\"],\"err\":\"backend unreachable\"}") == 0,
        "json cut, closed: %s", line + n - 60);
    format_line(LOG_FORMAT_COMBINED, &a, line, sizeof line);
    n = strlen(line);
    CHECK(n < sizeof line - 1 && strcmp(line + n - 11, "\"...\" \"...\"") == 0, "combined cut, closed: %s",
        line + n - 30);
    format_line(LOG_FORMAT_PIBL, &a, line, sizeof line);
    n = strlen(line);
    CHECK(n < sizeof line - 1 && strstr(line, " err=\"backend unreachable\"") != NULL,
        "pibl cut, closed: %s", line + n - 60);

    /* Every month by name, whatever the locale; names parse back. */
    static const char *const months[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug",
        "Sep", "Oct", "Nov", "Dec" };
    memset(&a, 0, sizeof a);
    for (int m = 0; m < 12; m++) {
        struct tm tm;
        memset(&tm, 0, sizeof tm);
        tm.tm_year = 2026 - 1900;
        tm.tm_mon = m;
        tm.tm_mday = 5;
        tm.tm_hour = 7;
        struct timespec now = { timegm(&tm), 0 };
        size_t len = log_format_access(LOG_FORMAT_COMBINED, &a, &now, line, sizeof line - 1);
        line[len] = '\0';
        char want[40];
        snprintf(want, sizeof want, "[05/%s/2026:07:00:00 +0000]", months[m]);
        CHECK(strstr(line, want) != NULL, "month %d: %s", m, line);
    }
    CHECK(log_format_parse("pibl") == LOG_FORMAT_PIBL && log_format_parse("combined") ==
        LOG_FORMAT_COMBINED && log_format_parse("json") == LOG_FORMAT_JSON &&
        log_format_parse("JSON") == -1 && log_format_parse("") == -1, "format names");
}

/* ------------------------------------------------------------ freshness fields */

/* Parse "HTTP/1.1 200 OK\r\n" + fields + "\r\n" into r (buf keeps the bytes). */
static int
fields_of(const char *fields, char *buf, size_t cap, struct http_response *r)
{
    int n = snprintf(buf, cap, "HTTP/1.1 200 OK\r\n%s\r\n", fields);
    return n < 0 || (size_t)n >= cap ? -1 : http_parse_response(buf, (size_t)n, r);
}

struct age_case {
    const char *fields;
    long want;
};

static const struct age_case g_age_cases[] = {
    { "X: y\r\n", AGE_NONE },
    { "Age: 0\r\n", 0 },
    { "Age: 30\r\n", 30 },
    { "Age: 007\r\n", 7 },
    { "Age: 99999999999\r\n", 2147483647L },        /* capped, RFC 9111 1.2.2 */
    { "Age: abc\r\n", AGE_INVALID },
    { "Age: -10\r\n", AGE_INVALID },
    { "Age: 10.0\r\n", AGE_INVALID },
    { "Age: 10;a=b\r\n", AGE_INVALID },
    { "Age: 0, 0\r\n", AGE_INVALID },
    { "Age: 0,7200\r\n", AGE_INVALID },
    { "Age: \"10\"\r\n", AGE_INVALID },
    { "Age: 0\r\nAge: 0\r\n", AGE_INVALID },
    { "Age:\r\n", AGE_INVALID },
};

struct date_case {
    const char *v;
    time_t want;                   /* -1: not a date */
};

static const struct date_case g_date_cases[] = {
    { "Sun, 06 Nov 1994 08:49:37 GMT", 784111777 },        /* RFC 9110 5.6.7's three forms */
    { "Sunday, 06-Nov-94 08:49:37 GMT", 784111777 },
    { "Sun Nov  6 08:49:37 1994", 784111777 },
    { "Sun Nov 06 08:49:37 1994", 784111777 },
    { "Thu, 01 Jan 1970 00:00:00 GMT", 0 },
    { "Fri, 31 Dec 9999 23:59:59 GMT", 253402300799 },
    { "Sun, 06 Nov 1994 08:49:37 UTC", -1 },                /* only GMT */
    { "sun, 06 nov 1994 08:49:37 gmt", -1 },                /* case-sensitive */
    { "Sun, 6 Nov 1994 08:49:37 GMT", -1 },                 /* two-digit day */
    { "Sun, 06 Nov 94 08:49:37 GMT", -1 },
    { "Sun, 06-Nov-1994 08:49:37 GMT", -1 },
    { "Sun, 06 Nov 1994 08.49.37 GMT", -1 },
    { "Sun, 06 Nov 1994 25:00:00 GMT", -1 },
    { "Sun, 06 Nov 1960 08:49:37 GMT", -1 },                /* before 1970 */
    { "Sund, 06 Nov 1994 08:49:37 GMT", -1 },
    { "Sun 06 Nov 1994 08:49:37 GMT", -1 },
    { "0", -1 },
    { "", -1 },
};

/* Host values (RFC 9110 7.2, RFC 3986 3.2.2). */
static void
test_hosts(void)
{
    static const struct { const char *h; int ok; } cases[] = {
        { "example.com", 1 }, { "example.com.", 1 }, { "example.com:80", 1 }, { "a:", 1 },
        { "127.0.0.1:8080", 1 }, { "[::1]", 1 }, { "[::1]:8080", 1 }, { "[::1]:", 1 },
        { "[2001:db8::7]", 1 }, { "[::ffff:10.0.0.1]", 1 }, { "[v1.fe]", 1 }, { "[V7.a:b]", 1 },
        { "a%41b", 1 }, { "xn--bcher-kva.example", 1 }, { "", 1 },
        { "a:b", 0 }, { "a:80:80", 0 }, { "a:8o", 0 }, { "[::1", 0 }, { "[]", 0 }, { "[::1]x", 0 },
        { "[::1]:8x", 0 }, { "::1", 0 }, { "[foo]", 0 }, { "[!]", 0 }, { "[;,]", 0 }, { "[v1.]", 0 },
        { "[v.fe]", 0 }, { "[vg.fe]", 0 }, { "[1.2.3.4]", 0 }, { "a%zzb", 0 }, { "a%4", 0 },
        { "a b", 0 }, { "a/b", 0 }, { "a@b", 0 }, { "a]b", 0 }, { "a[b", 0 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        CHECK(http_valid_host(cases[i].h, strlen(cases[i].h)) == cases[i].ok, "Host \"%s\": want %d",
            cases[i].h, cases[i].ok);
}

/* purge_allow / admin_allow: addresses and ranges, IPv4 and IPv6. */
static void
test_address_lists(void)
{
    static const struct { const char *list, *ip; int want; } cases[] = {
        { "127.0.0.1 ::1", "127.0.0.1", 1 },
        { "127.0.0.1 ::1", "::1", 1 },
        { "127.0.0.1 ::1", "127.0.0.2", 0 },
        { "127.0.0.0/8", "127.200.1.9", 1 },
        { "10.0.0.0/8, 192.168.1.0/24", "192.168.1.77", 1 },
        { "10.0.0.0/8, 192.168.1.0/24", "192.168.2.1", 0 },
        { "172.16.0.0/12", "172.31.255.255", 1 },
        { "172.16.0.0/12", "172.32.0.1", 0 },
        { "0.0.0.0/0", "203.0.113.5", 1 },
        { "0.0.0.0/0", "2001:db8::1", 0 },      /* families never mix */
        { "2001:db8::/32", "2001:db8:ffff::1", 1 },
        { "2001:db8::/32", "2001:db9::1", 0 },
        { "fd00::/7", "fc12::1", 1 },
        { "10.1.2.3/32", "10.1.2.3", 1 },
        { "10.1.2.3/32", "10.1.2.4", 0 },
        { "", "127.0.0.1", 0 },
        { "127.0.0.1", "not-an-ip", 0 },
        { "::ffff:127.0.0.1", "127.0.0.1", 1 },   /* a mapped member is its IPv4 address */
        { "::ffff:10.0.0.0/104", "10.9.9.9", 1 },
        { "::ffff:10.0.0.0/104", "11.0.0.1", 0 },
    };
    char why[160];

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        CHECK(sock_ip_listed(cases[i].list, cases[i].ip) == cases[i].want, "\"%s\" has %s: want %d",
            cases[i].list, cases[i].ip, cases[i].want);
    CHECK(sock_acl_check("127.0.0.1 ::1, 10.0.0.0/8 fd00::/8", why, sizeof why) == 0, "a good list");
    static const char *const bad[] = { "localhost", "10.0.0.0/33", "::/129", "1.2.3.4/", "1.2.3/8",
        "1.2.3.4/x", "/8", "1.2.3.4/1234" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        why[0] = '\0';
        CHECK(sock_acl_check(bad[i], why, sizeof why) == -1 && strstr(why, bad[i]) != NULL,
            "bad member %s: %s", bad[i], why);
    }
}

static void
test_freshness(void)
{
    char buf[1024];
    struct http_response r;

    for (size_t i = 0; i < sizeof g_age_cases / sizeof g_age_cases[0]; i++) {
        const struct age_case *t = &g_age_cases[i];
        if (fields_of(t->fields, buf, sizeof buf, &r) != 0) {
            CHECK(0, "age case %zu does not parse", i);
            continue;
        }
        long got = freshness_age(r.headers, r.n_headers);
        CHECK(got == t->want, "Age case %zu: got %ld, want %ld", i, got, t->want);
    }
    for (size_t i = 0; i < sizeof g_date_cases / sizeof g_date_cases[0]; i++) {
        const struct date_case *t = &g_date_cases[i];
        time_t got = http_parse_date(t->v, strlen(t->v));
        CHECK(got == t->want, "date \"%s\": got %lld, want %lld", t->v, (long long)got,
            (long long)t->want);
    }

    /* The Date PIBL writes: an IMF-fixdate that reads back as the same time. */
    char date[HTTP_DATE_LEN + 1];
    CHECK(http_format_date(784111777, date) == HTTP_DATE_LEN &&
        strcmp(date, "Sun, 06 Nov 1994 08:49:37 GMT") == 0, "IMF-fixdate written: %s", date);
    CHECK(http_format_date(1798761600, date) == HTTP_DATE_LEN &&
        http_parse_date(date, strlen(date)) == 1798761600, "written date reads back: %s", date);
    static const char field[] = "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n";
    char hb[96];
    struct http_builder b = { hb, sizeof hb, 0, 0 };
    http_put_date(&b, 784111777);
    http_put_date(&b, 784111777);               /* the second from the thread's cached text */
    CHECK(!b.overflow && b.len == 2 * (sizeof field - 1) && memcmp(hb, field, sizeof field - 1) == 0 &&
        memcmp(hb + sizeof field - 1, field, sizeof field - 1) == 0, "Date field: %.*s", (int)b.len, hb);
    b.len = 0;
    http_put_date(&b, 784111778);
    CHECK(b.len == sizeof field - 1 && memcmp(hb, "Date: Sun, 06 Nov 1994 08:49:38 GMT\r\n", b.len) == 0,
        "Date field of the next second: %.*s", (int)b.len, hb);

    /* Expires: one valid date; several fields or an invalid value mean already expired. */
    time_t when;
    fields_of("Expires: Sun, 06 Nov 1994 08:49:37 GMT\r\n", buf, sizeof buf, &r);
    CHECK(freshness_expires(r.headers, r.n_headers, &when) == EXPIRES_AT && when == 784111777,
        "Expires valid");
    fields_of("Expires: 0\r\n", buf, sizeof buf, &r);
    CHECK(freshness_expires(r.headers, r.n_headers, &when) == EXPIRES_INVALID, "Expires 0");
    fields_of("Expires: Sun, 06 Nov 1994 08:49:37 GMT\r\nExpires: Sun, 06 Nov 1994 08:49:37 GMT\r\n",
        buf, sizeof buf, &r);
    CHECK(freshness_expires(r.headers, r.n_headers, &when) == EXPIRES_INVALID, "two Expires");
    fields_of("X: y\r\n", buf, sizeof buf, &r);
    CHECK(freshness_expires(r.headers, r.n_headers, &when) == EXPIRES_NONE, "no Expires");

    /* Cache-Control directives. */
    struct cache_ctl cc;
    struct { const char *fields; long max_age, s_maxage, swr, sie; int no_cache, must_reval, n_omit; }
    cc_cases[] = {
        { "Cache-Control: max-age=60\r\n", 60, -1, -1, -1, 0, 0, 0 },
        { "Cache-Control: MAX-AGE=60, s-maxage=\"30\"\r\n", 60, 30, -1, -1, 0, 0, 0 },
        { "Cache-Control: max-age = 60\r\n", 60, -1, -1, -1, 0, 0, 0 },
        { "Cache-Control: max-age=a100\r\n", 0, -1, -1, -1, 0, 0, 0 },       /* invalid: stale */
        { "Cache-Control: max-age=100a\r\n", 0, -1, -1, -1, 0, 0, 0 },
        { "Cache-Control: max-age=1 2\r\n", 0, -1, -1, -1, 0, 0, 0 },
        { "Cache-Control: max-age=5, max-age=100\r\n", 5, -1, -1, -1, 0, 0, 0 }, /* the first */
        { "Cache-Control: max-age=1\r\nCache-Control: max-age=9\r\n", 1, -1, -1, -1, 0, 0, 0 },
        { "Cache-Control: max-age=99999999999\r\n", 2147483647L, -1, -1, -1, 0, 0, 0 },
        { "Cache-Control: max-age=1, stale-while-revalidate=30, stale-if-error=60\r\n", 1, -1, 30,
          60, 0, 0, 0 },
        { "Cache-Control: no-cache, proxy-revalidate\r\n", -1, -1, -1, -1, 1, 1, 0 },
        { "Cache-Control: must-revalidate\r\n", -1, -1, -1, -1, 0, 1, 0 },
        { "Cache-Control: no-cache=\"Set-Cookie, X-A\"\r\n", -1, -1, -1, -1, 0, 0, 2 },
        { "Cache-Control: private=\"X-B\", max-age=3\r\n", 3, -1, -1, -1, 0, 0, 1 },
        { "Cache-Control: foo=\"max-age=9\", max-age=4\r\n", 4, -1, -1, -1, 0, 0, 0 },
    };
    for (size_t i = 0; i < sizeof cc_cases / sizeof cc_cases[0]; i++) {
        fields_of(cc_cases[i].fields, buf, sizeof buf, &r);
        freshness_cache_control(r.headers, r.n_headers, "cache-control", &cc);
        CHECK(cc.max_age == cc_cases[i].max_age && cc.s_maxage == cc_cases[i].s_maxage &&
            cc.stale_while_revalidate == cc_cases[i].swr && cc.stale_if_error == cc_cases[i].sie &&
            cc.no_cache == cc_cases[i].no_cache && cc.must_revalidate == cc_cases[i].must_reval &&
            cc.n_omit == cc_cases[i].n_omit,
            "Cache-Control case %zu (%s): max-age %ld s-maxage %ld swr %ld sie %ld no-cache %d "
            "must-revalidate %d omit %d", i, cc_cases[i].fields, cc.max_age, cc.s_maxage,
            cc.stale_while_revalidate, cc.stale_if_error, cc.no_cache, cc.must_revalidate, cc.n_omit);
    }
    fields_of("Cache-Control: no-cache=\"Set-Cookie, X-A\"\r\n", buf, sizeof buf, &r);
    freshness_cache_control(r.headers, r.n_headers, "cache-control", &cc);
    CHECK(cc.n_omit == 2 && cc.omit[0].len == 10 && memcmp(cc.omit[0].name, "Set-Cookie", 10) == 0 &&
        cc.omit[1].len == 3 && memcmp(cc.omit[1].name, "X-A", 3) == 0, "no-cache field names");

    /* Targeted fields (RFC 9213): the most specific one with a directive for PIBL wins whole. */
    struct { const char *fields; const char *used; long max_age; int no_store; } t_cases[] = {
        { "Cache-Control: max-age=5\r\n", "cache-control", 5, 0 },
        { "Cache-Control: no-store\r\nCDN-Cache-Control: max-age=6\r\n", "cdn-cache-control", 6, 0 },
        { "CDN-Cache-Control: max-age=6\r\nPIBL-Cache-Control: no-store\r\n", "pibl-cache-control",
          -1, 1 },
        { "Cache-Control: no-store\r\nSurrogate-Control: max-age=7;pibl\r\n", "surrogate-control", 7,
          0 },
        { "Cache-Control: max-age=5\r\nSurrogate-Control: max-age=7;other\r\n", "cache-control", 5,
          0 },
        { "Surrogate-Control: max-age=7, no-store;other\r\n", "surrogate-control", 7, 0 },
        { "X: y\r\n", NULL, -1, 0 },
    };
    for (size_t i = 0; i < sizeof t_cases / sizeof t_cases[0]; i++) {
        fields_of(t_cases[i].fields, buf, sizeof buf, &r);
        const char *used = freshness_targeted(r.headers, r.n_headers, &cc);
        CHECK(((used == NULL && t_cases[i].used == NULL) ||
            (used != NULL && t_cases[i].used != NULL && strcmp(used, t_cases[i].used) == 0)) &&
            cc.max_age == t_cases[i].max_age && cc.no_store == t_cases[i].no_store,
            "targeted case %zu: used %s, max-age %ld, no-store %d", i, used ? used : "none",
            cc.max_age, cc.no_store);
    }
}

/* ------------------------------------------------------------ buffer blocks */

/* A block given back is the next one taken (not mapped again); one of
 * another size is not; the stack holds BLOCK_CACHE_MAX; a trim unmaps
 * those not taken since the last one. */
static void
test_block_cache(void)
{
    static struct pibl_config cfg, cfg2;
    static struct conn c[BLOCK_CACHE_MAX + 5];
    int held = conn_blocks();

    cfg.max_header_bytes = 8192;
    cfg2.max_header_bytes = 16384;
    conn_trim_blocks(1000000000000);            /* low-water = what is kept now */
    conn_trim_blocks(1000000000000 + BLOCK_TRIM_MS);
    CHECK(conn_cached_blocks() == 0, "blocks kept at start: %d", conn_cached_blocks());
    c[0].cfg = &cfg;
    CHECK(conn_buffers(&c[0]) == 0 && c[0].in != NULL && conn_blocks() == held + 1, "a block taken");
    char *first = c[0].in;
    c[0].x->backend = 7;                        /* left over from an exchange */
    memset(c[0].in, 'x', 64);
    conn_free_buffers(&c[0]);
    CHECK(c[0].in == NULL && conn_blocks() == held && conn_cached_blocks() == 1, "given back: kept");
    c[1].cfg = &cfg;
    CHECK(conn_buffers(&c[1]) == 0 && c[1].in == first && conn_cached_blocks() == 0, "the kept block reused");
    CHECK(c[1].x->backend == -1 && c[1].x->status == 0, "its exchange reset");
    CHECK(c[1].out == c[1].in + 8192 && c[1].uin == c[1].out + 8192 + HEAD_EXTRA_BYTES, "its layout");
    conn_free_buffers(&c[1]);
    c[2].cfg = &cfg2;                           /* a reload changed max_header_bytes */
    CHECK(conn_buffers(&c[2]) == 0 && c[2].in != NULL && c[2].in_cap == 16384, "a block of the new size");
    CHECK(conn_cached_blocks() == 0, "the block of the old size dropped, not reused");
    conn_free_buffers(&c[2]);
    conn_trim_blocks(1000000000000 + 2 * BLOCK_TRIM_MS);
    conn_trim_blocks(1000000000000 + 3 * BLOCK_TRIM_MS);
    CHECK(conn_cached_blocks() == 0, "trimmed: %d", conn_cached_blocks());
    int n = BLOCK_CACHE_MAX + 5, ok = 1;
    for (int i = 0; i < n; i++) {
        c[i].cfg = &cfg;
        ok &= conn_buffers(&c[i]) == 0;
    }
    for (int i = 0; i < n; i++)
        conn_free_buffers(&c[i]);
    CHECK(ok && conn_cached_blocks() == BLOCK_CACHE_MAX && conn_blocks() == held, "at most BLOCK_CACHE_MAX kept: %d",
        conn_cached_blocks());
    /* A trim sets the low-water mark; 10 taken and given back since: the
     * other BLOCK_CACHE_MAX - 10 sat unused and go at the next trim, not
     * before it. */
    int64_t t = 1000000000000 + 4 * BLOCK_TRIM_MS;
    conn_trim_blocks(t);
    for (int i = 0; i < 10; i++)
        conn_buffers(&c[i]);
    for (int i = 0; i < 10; i++)
        conn_free_buffers(&c[i]);
    conn_trim_blocks(t + BLOCK_TRIM_MS - 1);
    CHECK(conn_cached_blocks() == BLOCK_CACHE_MAX, "no trim before BLOCK_TRIM_MS: %d", conn_cached_blocks());
    conn_trim_blocks(t + BLOCK_TRIM_MS);
    CHECK(conn_cached_blocks() == 10, "the unused ones trimmed: %d kept", conn_cached_blocks());
    conn_trim_blocks(t + 2 * BLOCK_TRIM_MS);
    CHECK(conn_cached_blocks() == 0, "then the rest: %d kept", conn_cached_blocks());
}

int
main(void)
{
    test_request_heads();
    test_head_end();
    test_conditionals();
    test_cache_key();
    test_response_heads();
    test_chunked();
    test_content_length();
    test_lookalikes();
    test_config();
    test_round_robin();
    test_backend_admin();
    test_field_lists();
    test_cache_decisions();
    test_freshness();
    test_address_lists();
    test_hosts();
    test_access_lines();
    test_block_cache();
    printf("unit: %d passed, %d failed\n", n_passed, n_failed);
    return n_failed == 0 ? 0 : 1;
}

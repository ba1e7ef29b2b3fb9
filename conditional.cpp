/*
 * conditional.cpp - a request's conditionals and Range against a stored
 * answer (RFC 9110 13 and 14): whether the client's copy is current (a 304
 * from the cache), and which bytes of the entry a GET asked for. Pure
 * functions over parsed heads.
 *
 * It does not send anything (cachepolicy.cpp answers) nor read files.
 * Refused on purpose: several ranges and other units get the whole answer
 * (RFC 9110 14.2 allows it); a weak entity tag never satisfies If-Range.
 * Limits: range positions up to 18 digits.
 */
#include "conditional.h"
#include "http.h"
#include "httpdate.h"

#include <stdint.h>
#include <string.h>
#include <time.h>

/* Weak comparison of one entity tag with a list (RFC 9110 8.8.3.2, 13.1.2). */
static int
etag_in_list(const char *etag, size_t etag_len, const char *list, size_t list_len)
{
    if (etag_len > 2 && etag[0] == 'W' && etag[1] == '/') {
        etag += 2;
        etag_len -= 2;
    }
    const char *p = list, *end = list + list_len;
    while (p < end) {
        while (p < end && (*p == ',' || *p == ' ' || *p == '\t'))
            p++;
        if (p < end && *p == '*')
            return 1;
        if (end - p > 2 && p[0] == 'W' && p[1] == '/')
            p += 2;
        const char *t = p;
        if (p < end && *p == '"') {
            const char *q = (const char *)memchr(p + 1, '"', (size_t)(end - p - 1));
            p = q ? q + 1 : end;
        } else {
            while (p < end && *p != ',')
                p++;
        }
        if ((size_t)(p - t) == etag_len && memcmp(t, etag, etag_len) == 0)
            return 1;
    }
    return 0;
}

int
cond_client_has_current(const struct http_request *r, const struct http_response *stored)
{
    const struct http_header *inm = http_find_field(r->headers, r->n_headers, "if-none-match");
    const struct http_header *etag = http_find_field(stored->headers, stored->n_headers, "etag");

    if (inm != NULL)
        return etag != NULL &&
            etag_in_list(etag->value, etag->value_len, inm->value, inm->value_len);
    const struct http_header *ims = http_find_field(r->headers, r->n_headers, "if-modified-since");
    const struct http_header *lm =
        http_find_field(stored->headers, stored->n_headers, "last-modified");
    if (ims == NULL || lm == NULL)
        return 0;
    time_t since = http_parse_date(ims->value, ims->value_len);
    time_t modified = http_parse_date(lm->value, lm->value_len);
    return since != -1 && modified != -1 && modified <= since;
}

/* A whole decimal number of [p, end) into *v, held at RANGE_NUMBER_MAX when
 * longer: a position past any body still means "to the end" (RFC 9110
 * 14.1.2). 0, or -1 when empty or not digits. */
#define RANGE_NUMBER_MAX (1ULL << 62)
static int
range_number(const char *p, const char *end, uint64_t *v)
{
    if (p >= end)
        return -1;
    *v = 0;
    for (; p < end; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        *v = *v >= RANGE_NUMBER_MAX / 10 ? RANGE_NUMBER_MAX : *v * 10 + (uint64_t)(*p - '0');
    }
    return 0;
}

/* If-Range (RFC 9110 13.1.5): 1 when its validator is the stored one's,
 * compared strongly (an entity tag) or exactly (a date, to Last-Modified). */
static int
if_range_holds(const struct http_header *ir, const struct http_response *stored)
{
    const struct http_header *etag = http_find_field(stored->headers, stored->n_headers, "etag");
    const struct http_header *lm =
        http_find_field(stored->headers, stored->n_headers, "last-modified");

    int weak = ir->value_len >= 2 && ir->value[0] == 'W' && ir->value[1] == '/';
    if (weak || (ir->value_len > 0 && ir->value[0] == '"'))   /* "Wed, ..." is a date */
        return !weak && etag != NULL && etag->value_len == ir->value_len &&
            memcmp(etag->value, ir->value, ir->value_len) == 0;
    time_t when = http_parse_date(ir->value, ir->value_len);
    return when != -1 && lm != NULL && http_parse_date(lm->value, lm->value_len) == when;
}

int
cond_range(const struct http_request *r, const struct http_response *stored, uint64_t total,
    uint64_t *from, uint64_t *len)
{
    const struct http_header *h = NULL;
    int n = 0;

    for (int i = 0; i < r->n_headers; i++)
        if (http_name_is(r->headers[i].name, r->headers[i].name_len, "range")) {
            h = &r->headers[i];
            n++;
        }
    if (n != 1 || h->value_len < 7 || !http_same_ci(h->value, "bytes=", 6))
        return COND_RANGE_WHOLE;
    const struct http_header *ir = http_find_field(r->headers, r->n_headers, "if-range");
    if (ir != NULL && !if_range_holds(ir, stored))
        return COND_RANGE_WHOLE;
    const char *p = h->value + 6, *end = h->value + h->value_len;
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    while (end > p && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    const char *dash = (const char *)memchr(p, '-', (size_t)(end - p));
    if (dash == NULL || memchr(p, ',', (size_t)(end - p)) != NULL)
        return COND_RANGE_WHOLE;                     /* several ranges: the whole body */
    uint64_t a, b;
    if (dash == p) {                            /* "-n": the last n bytes */
        if (range_number(dash + 1, end, &b) == -1)
            return COND_RANGE_WHOLE;
        if (b == 0 || total == 0)
            return COND_RANGE_UNSATISFIABLE;
        *len = b < total ? b : total;
        *from = total - *len;
        return COND_RANGE_PART;
    }
    if (range_number(p, dash, &a) == -1)
        return COND_RANGE_WHOLE;
    if (dash + 1 == end)
        b = total > 0 ? total - 1 : 0;
    else if (range_number(dash + 1, end, &b) == -1 || b < a)
        return COND_RANGE_WHOLE;                     /* invalid: ignored (14.1.1) */
    if (a >= total)
        return COND_RANGE_UNSATISFIABLE;
    if (b >= total)
        b = total - 1;
    *from = a;
    *len = b - a + 1;
    return COND_RANGE_PART;
}

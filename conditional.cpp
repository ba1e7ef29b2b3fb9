/*
 * conditional.cpp - a request's conditionals and Range against a stored
 * answer (RFC 9110 13 and 14): whether the client's copy is current (a 304
 * from the cache), and which bytes of the entry a GET asked for. Pure
 * functions over parsed heads.
 *
 * It does not send anything (cachepolicy.cpp answers) nor read files.
 * Refused on purpose: several ranges and other units get the whole answer
 * (RFC 9110 14.2 allows it); a weak validator never satisfies If-Range.
 * Limits: range positions up to 18 digits.
 */
#include "conditional.h"
#include "http.h"
#include "httpdate.h"

#include <stdint.h>
#include <string.h>
#include <time.h>

/* One entity tag of a list at *p (to end), its W/ prefix not included in
 * [*tag, *tag + *len); *weak says whether it had one. 0, or -1 at the end. */
static int
next_etag(const char **p, const char *end, const char **tag, size_t *len, int *weak)
{
    const char *q = *p;
    while (q < end && (*q == ',' || *q == ' ' || *q == '\t'))
        q++;
    if (q >= end)
        return -1;
    *weak = end - q > 2 && q[0] == 'W' && q[1] == '/';
    if (*weak)
        q += 2;
    const char *t = q;
    if (q < end && *q == '"') {
        const char *close = (const char *)memchr(q + 1, '"', (size_t)(end - q - 1));
        q = close ? close + 1 : end;
    } else {
        while (q < end && *q != ',')
            q++;
        while (q > t && (q[-1] == ' ' || q[-1] == '\t'))
            q--;
    }
    *tag = t;
    *len = (size_t)(q - t);
    *p = q;
    return 0;
}

/*
 * Whether a list field of r (If-None-Match; all its lines, as one list,
 * RFC 9110 5.3) names the entity tag of stored, compared weakly (8.8.3.2):
 * 1 yes, 0 no, -1 when r has no such field. "*" names any current answer.
 * The stored tag is looked up only once r has the field (the common hit
 * has none).
 */
static int
list_names(const struct http_request *r, const char *field, const struct http_response *stored)
{
    int seen = 0;
    const char *tag_of_stored = NULL;
    size_t stored_len = 0;

    for (int i = 0; i < r->n_headers; i++) {
        const struct http_header *h = &r->headers[i];
        if (!http_name_is(h->name, h->name_len, field))
            continue;
        if (!seen) {
            const struct http_header *etag =
                http_find_field(stored->headers, stored->n_headers, "etag");
            int weak;
            const char *p = etag != NULL ? etag->value : NULL;
            if (etag != NULL &&
                next_etag(&p, etag->value + etag->value_len, &tag_of_stored, &stored_len, &weak) == -1)
                tag_of_stored = NULL;
        }
        seen = 1;
        const char *p = h->value, *end = h->value + h->value_len, *tag;
        size_t len;
        int weak;
        while (next_etag(&p, end, &tag, &len, &weak) == 0) {
            if (len == 1 && tag[0] == '*' && !weak)
                return 1;
            if (tag_of_stored != NULL && len == stored_len && memcmp(tag, tag_of_stored, len) == 0)
                return 1;
        }
    }
    return seen ? 0 : -1;
}

/* The date of r's field (If-Modified-Since, If-Unmodified-Since), or -1
 * when absent, invalid or on several lines (RFC 9110 13.1.3, 13.1.4). */
static time_t
request_date(const struct http_request *r, const char *field)
{
    const struct http_header *found = NULL;

    for (int i = 0; i < r->n_headers; i++)
        if (http_name_is(r->headers[i].name, r->headers[i].name_len, field)) {
            if (found != NULL)
                return -1;
            found = &r->headers[i];
        }
    return found == NULL ? -1 : http_parse_date(found->value, found->value_len);
}

/* A date field of the stored head, or -1. */
static time_t
stored_date(const struct http_response *stored, const char *field)
{
    const struct http_header *h = http_find_field(stored->headers, stored->n_headers, field);
    return h == NULL ? -1 : http_parse_date(h->value, h->value_len);
}

int
cond_evaluate(const struct http_request *r, const struct http_response *stored, time_t received)
{
    /* Preconditions apply only where the answer would be a 2xx (13.2.1). */
    if (stored->status < 200 || stored->status > 299)
        return COND_SERVE;
    /* 13.2.2, steps 3 and 4: If-Match and If-Unmodified-Since are for the
     * origin (RFC 9111 4.3.2; cachepolicy.cpp forwards them). */
    int none = list_names(r, "if-none-match", stored);
    if (none != -1)
        return none ? COND_NOT_MODIFIED : COND_SERVE;
    time_t since = request_date(r, "if-modified-since");
    if (since == -1)
        return COND_SERVE;
    /* Without Last-Modified, the Date of the stored answer, or the time it
     * was received, stands for it (RFC 9111 4.3.2). */
    time_t modified = stored_date(stored, "last-modified");
    if (modified == -1)
        modified = stored_date(stored, "date");
    if (modified == -1)
        modified = received;
    return modified <= since ? COND_NOT_MODIFIED : COND_SERVE;
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
 * compared strongly: an entity tag, or a date equal to Last-Modified when
 * that date is strong, at least a second before the stored Date (8.8.2.2). */
static int
if_range_holds(const struct http_header *ir, const struct http_response *stored)
{
    const struct http_header *etag = http_find_field(stored->headers, stored->n_headers, "etag");

    int weak = ir->value_len >= 2 && ir->value[0] == 'W' && ir->value[1] == '/';
    if (weak || (ir->value_len > 0 && ir->value[0] == '"'))   /* "Wed, ..." is a date */
        return !weak && etag != NULL && etag->value_len == ir->value_len &&
            memcmp(etag->value, ir->value, ir->value_len) == 0;
    time_t when = http_parse_date(ir->value, ir->value_len);
    time_t modified = stored_date(stored, "last-modified");
    time_t date = stored_date(stored, "date");
    return when != -1 && modified == when && date != -1 && date - modified >= 1;
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

/*
 * freshness.cpp - parsers of the freshness fields: Cache-Control and its
 * targeted variants (RFC 9111 5.2, RFC 9213, the older Surrogate-Control),
 * Age (RFC 9111 5.1) and Expires (RFC 9111 5.3, dates by http.cpp).
 *
 * Directives are read leniently where the RFC lets a recipient (names in
 * any case, blanks around '=' and commas, quoted or bare values) and
 * strictly where a wrong reading could serve something stale: a delta that
 * is not all digits is ignored, an Age that is not one integer makes the
 * answer stale, an Expires that is not a date means already expired.
 */
#include "freshness.h"
#include "http.h"
#include "httpdate.h"

#include <limits.h>
#include <string.h>

#define DELTA_MAX 2147483647L         /* RFC 9111 1.2.2: larger means this */

/* delta-seconds, bare or quoted: digits only. Returns -1 when it is not. */
static long
parse_delta(const char *v, size_t len)
{
    long n = 0;

    if (len >= 2 && v[0] == '"' && v[len - 1] == '"') {
        v++;
        len -= 2;
    }
    if (len == 0)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -1;
        n = n < DELTA_MAX / 10 ? n * 10 + (v[i] - '0') : DELTA_MAX;
    }
    return n;
}

/* The field names of a quoted no-cache="a, b" or private="a, b" list. */
static void
add_omitted(struct cache_ctl *cc, const char *v, size_t len)
{
    if (len < 2 || v[0] != '"' || v[len - 1] != '"')
        return;
    const char *p = v + 1, *end = v + len - 1, *t;
    size_t tl;
    while ((tl = http_list_next(&p, end, ", \t", &t)) > 0 || p < end) {
        if (tl == 0) {
            p++;
            continue;
        }
        if (cc->n_omit < MAX_NO_CACHE_FIELDS) {
            cc->omit[cc->n_omit].name = t;
            cc->omit[cc->n_omit].len = tl;
            cc->n_omit++;
        }
    }
}

/* Apply one directive; a repeated one keeps its first value. */
static void
apply(struct cache_ctl *cc, const char *name, size_t nl, const char *val, size_t vl, int has_val)
{
    long d = has_val ? parse_delta(val, vl) : -1;

    if (http_name_is(name, nl, "no-store")) {
        cc->no_store = 1;
    } else if (http_name_is(name, nl, "no-cache")) {
        if (has_val && vl > 2)
            add_omitted(cc, val, vl);
        else
            cc->no_cache = 1;
    } else if (http_name_is(name, nl, "private")) {
        if (has_val && vl > 2)
            add_omitted(cc, val, vl);
        else
            cc->is_private = 1;
    } else if (http_name_is(name, nl, "public")) {
        cc->is_public = 1;
    } else if (http_name_is(name, nl, "must-revalidate") ||
        http_name_is(name, nl, "proxy-revalidate")) {
        cc->must_revalidate = 1;
    } else if (http_name_is(name, nl, "must-understand")) {
        cc->must_understand = 1;
    } else if (http_name_is(name, nl, "only-if-cached")) {
        cc->only_if_cached = 1;
    } else if (http_name_is(name, nl, "max-age")) {
        if (cc->max_age < 0)
            cc->max_age = has_val && d < 0 ? 0 : d;   /* an invalid max-age: stale */
    } else if (http_name_is(name, nl, "s-maxage")) {
        if (cc->s_maxage < 0)
            cc->s_maxage = has_val && d < 0 ? 0 : d;
    } else if (http_name_is(name, nl, "stale-while-revalidate")) {
        if (cc->stale_while_revalidate < 0)
            cc->stale_while_revalidate = d;
    } else if (http_name_is(name, nl, "stale-if-error")) {
        if (cc->stale_if_error < 0)
            cc->stale_if_error = d;
    } else if (http_name_is(name, nl, "max-stale")) {
        if (cc->max_stale < 0)
            cc->max_stale = has_val ? d : LONG_MAX;
    } else if (http_name_is(name, nl, "min-fresh")) {
        if (cc->min_fresh < 0)
            cc->min_fresh = d;
    }
}

int
freshness_cache_control(const struct http_header *hdrs, int n, const char *name,
    struct cache_ctl *cc)
{
    int found = 0, surrogate = strcmp(name, "surrogate-control") == 0;

    memset(cc, 0, sizeof *cc);
    cc->max_age = cc->s_maxage = cc->stale_while_revalidate = cc->stale_if_error = -1;
    cc->max_stale = cc->min_fresh = -1;
    for (int i = 0; i < n; i++) {
        if (!http_name_is(hdrs[i].name, hdrs[i].name_len, name))
            continue;
        const char *p = hdrs[i].value, *end = p + hdrs[i].value_len;
        while (p < end) {
            while (p < end && (*p == ',' || *p == ' ' || *p == '\t'))
                p++;
            const char *dn = p;
            while (p < end && *p != '=' && *p != ',' && *p != ' ' && *p != '\t')
                p++;
            size_t nl = (size_t)(p - dn);
            while (p < end && (*p == ' ' || *p == '\t'))
                p++;
            const char *val = NULL;
            size_t vl = 0;
            int has_val = p < end && *p == '=';
            if (has_val) {
                p++;
                while (p < end && (*p == ' ' || *p == '\t'))
                    p++;
                val = p;
                if (p < end && *p == '"') {
                    const char *q = (const char *)memchr(p + 1, '"', (size_t)(end - p - 1));
                    p = q ? q + 1 : end;
                } else {
                    while (p < end && *p != ',' && *p != ' ' && *p != '\t')
                        p++;
                }
                vl = (size_t)(p - val);
            }
            /* Anything else before the next comma spoils the value
             * ("max-age=1 2"): an invalid value, so the safe reading. */
            const char *rest = p;
            while (p < end && *p != ',')
                p++;
            for (const char *q = rest; q < p && has_val; q++)
                if (*q != ' ' && *q != '\t')
                    vl = 0;
            /* Surrogate-Control (W3C Edge Architecture): "directive;device"
             * is for that device only; PIBL is "pibl". */
            if (surrogate) {
                const char *d_end = has_val ? val + vl : dn + nl;
                const char *semi = (const char *)memchr(dn, ';', (size_t)(d_end - dn));
                if (semi != NULL) {
                    size_t tl = (size_t)(d_end - semi - 1);
                    if (tl != strlen(FRESHNESS_DEVICE) ||
                        !http_same_ci(semi + 1, FRESHNESS_DEVICE, tl))
                        continue;                   /* another device's */
                    if (has_val && semi >= val)
                        vl = (size_t)(semi - val);
                    else
                        nl = (size_t)(semi - dn);
                }
            }
            if (nl > 0) {
                apply(cc, dn, nl, val, vl, has_val);
                found++;
            }
        }
    }
    return found;
}

/* Targeted fields, most specific first (RFC 9213 2.2). */
static const char *const g_targeted[] = { "pibl-cache-control", "cdn-cache-control",
    "surrogate-control" };

const char *
freshness_targeted(const struct http_header *hdrs, int n, struct cache_ctl *cc)
{
    for (size_t i = 0; i < sizeof g_targeted / sizeof g_targeted[0]; i++) {
        struct cache_ctl t;
        if (freshness_cache_control(hdrs, n, g_targeted[i], &t) > 0) {
            *cc = t;
            return g_targeted[i];
        }
    }
    return freshness_cache_control(hdrs, n, "cache-control", cc) > 0 ? "cache-control" : NULL;
}

int
freshness_is_own(const struct http_header *h)
{
    return http_name_is(h->name, h->name_len, g_targeted[0]);
}

long
freshness_age(const struct http_header *hdrs, int n)
{
    const struct http_header *age = NULL;
    int count = http_find_single(hdrs, n, "age", &age);

    if (count == 0)
        return AGE_NONE;
    if (count > 1)
        return AGE_INVALID;                     /* several lines */
    long v = parse_delta(age->value, age->value_len);
    if (v < 0 || age->value[0] == '"')
        return AGE_INVALID;                     /* a list, sign, fraction, parameter */
    return v;
}

int
freshness_expires(const struct http_header *hdrs, int n, time_t *when)
{
    const struct http_header *h = NULL;
    int count = http_find_single(hdrs, n, "expires", &h);

    if (count == 0)
        return EXPIRES_NONE;
    if (count > 1)
        return EXPIRES_INVALID;
    *when = http_parse_date(h->value, h->value_len);
    return *when == -1 ? EXPIRES_INVALID : EXPIRES_AT;
}

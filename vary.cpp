/*
 * vary.cpp - Vary (RFC 9111 4.1): the request values a stored answer was
 * chosen by, normalised so two spellings that mean the same match, and the
 * variant slots that let one URL keep answers for several sets of values.
 *
 * It does not decide what is stored (cachepolicy.cpp) nor touch the files
 * (cache.cpp: it only looks up and removes keys there).
 * Refused on purpose: "Vary: *" (never stored), values past MAX_VARY_BYTES
 * or MAX_VARY_MEMBERS members of one field (not stored either).
 * Limits: MAX_VARIANTS slots a URL beside its own key.
 */
#include "vary.h"
#include "cache.h"
#include "exchange.h"
#include "http.h"

#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_VARY_MEMBERS 32          /* list members of one varied field compared */

/* One member of a varied field's list, normalised. */
struct vary_member {
    char text[MAX_VARY_BYTES];
    size_t len;
};

static int
member_cmp(const void *a, const void *b)
{
    const struct vary_member *x = (const struct vary_member *)a, *y = (const struct vary_member *)b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->text, y->text, n);
    return c != 0 ? c : (x->len > y->len) - (x->len < y->len);
}

/*
 * Append "name=values\n" for one request field name (lower-cased), or
 * "name\n" when the request has no such field, the
 * values normalised where RFC 9110 lets two spellings mean the same: all
 * its lines as one list (5.3), members without the blanks around them; for
 * the Accept fields (case-insensitive tokens whose weights are their
 * q-values, 12.4.2, not their places) also lower-cased, without inner
 * blanks, and sorted.
 * Returns 0, or -1 when it does not fit in cap.
 */
static int
append_vary(const struct http_request *r, const char *name, size_t name_len, char *out,
    size_t *len, size_t cap)
{
    struct http_builder b = { out, cap, *len, 0 };
    static thread_local struct vary_member m[MAX_VARY_MEMBERS];
    int n = 0, accept = name_len >= 6 && http_same_ci(name, "accept", 6);

    for (size_t i = 0; i < name_len; i++) {
        char ch = (char)tolower((unsigned char)name[i]);
        http_put(&b, &ch, 1);
    }
    int present = 0;
    for (int i = 0; i < r->n_headers; i++) {
        const struct http_header *h = &r->headers[i];
        if (h->name_len != name_len || !http_same_ci(h->name, name, name_len))
            continue;
        if (!present)
            http_put(&b, "=", 1);               /* absent is not empty (RFC 9111 4.1) */
        present = 1;
        const char *p = h->value, *end = p + h->value_len, *t;
        size_t tl;
        while ((tl = http_list_next(&p, end, ",", &t)) > 0 || p < end) {
            if (tl == 0) {
                p++;
                continue;
            }
            while (tl > 0 && (t[tl - 1] == ' ' || t[tl - 1] == '\t'))
                tl--;
            if (n == MAX_VARY_MEMBERS || tl >= sizeof m[0].text)
                return -1;
            m[n].len = 0;
            for (size_t k = 0; k < tl; k++) {
                char ch = t[k];
                if (accept && (ch == ' ' || ch == '\t'))
                    continue;
                m[n].text[m[n].len++] = accept ? (char)tolower((unsigned char)ch) : ch;
            }
            n++;
        }
    }
    if (accept)
        qsort(m, (size_t)n, sizeof m[0], member_cmp);
    for (int i = 0; i < n; i++) {
        if (i > 0)
            http_put(&b, ",", 1);
        http_put(&b, m[i].text, m[i].len);
    }
    http_put(&b, "\n", 1);
    if (b.overflow)
        return -1;
    *len = b.len;
    return 0;
}

/*
 * The request's values for the names in an answer's Vary fields, as
 * "name=value\n" lines. Returns 0, or -1 for "Vary: *" or too much.
 */
int
vary_of(const struct http_request *r, const struct http_response *resp, char *out,
    size_t cap)
{
    size_t len = 0;

    out[0] = '\0';
    for (int i = 0; i < resp->n_headers; i++) {
        const struct http_header *h = &resp->headers[i];
        if (!http_name_is(h->name, h->name_len, "vary"))
            continue;
        const char *p = h->value, *end = p + h->value_len, *t;
        while (p < end) {
            size_t tl = http_list_next(&p, end, ", \t", &t);
            if (tl == 0)
                continue;
            if (tl == 1 && *t == '*')
                return -1;
            if (append_vary(r, t, tl, out, &len, cap - 1) == -1)
                return -1;
        }
    }
    out[len] = '\0';
    return 0;
}

/*
 * The request's values, as "name=value\n" (or "name\n") lines, for the
 * names in stored (an entry's lines). Returns their length, or -1 when they do not fit.
 */
static long
vary_now(const struct http_request *r, const char *stored, char *now, size_t cap)
{
    size_t len = 0;

    for (const char *p = stored; *p != '\0';) {
        const char *nl = strchr(p, '\n');
        if (nl == NULL)
            return -1;
        const char *eq = (const char *)memchr(p, '=', (size_t)(nl - p));
        if (append_vary(r, p, (size_t)((eq != NULL ? eq : nl) - p), now, &len, cap - 1) == -1)
            return -1;
        p = nl + 1;
    }
    now[len] = '\0';
    return (long)len;
}

/* 1 when the request carries the same values an entry was stored for. */
int
vary_matches(const struct http_request *r, const char *stored)
{
    char now[MAX_VARY_BYTES];
    return vary_now(r, stored, now, sizeof now) >= 0 && strcmp(now, stored) == 0;
}

/*
 * Variants (RFC 9111 4.1): the first answer stored for a URL has its key;
 * the others live beside it under "KEY variant=N", N in [0, MAX_VARIANTS)
 * found from a hash of the request's values for the names the first one
 * varies on, then the next slots in turn; when all are taken by other
 * values, the variant replaces the one at its hash, so a URL never has
 * more than 1 + MAX_VARIANTS entries. A key holds no blank,
 * so the URL's own key is what comes before the first one.
 */
#define VARIANT_SUFFIX " variant="

static size_t
url_key_len(const char *key, size_t len)
{
    const char *sp = (const char *)memchr(key, ' ', len);
    return sp != NULL ? (size_t)(sp - key) : len;
}

/*
 * The slot this request's variant starts at, for the names the URL's entry
 * e varies on: a hash of the request's values for them. -1 when the values
 * or the key do not fit, or x->key is a slot already.
 */
static int
first_slot(const struct exchange *x, const struct cache_entry *e)
{
    char now[MAX_VARY_BYTES];
    long n = vary_now(&x->req, e->vary, now, sizeof now);
    size_t base = (size_t)x->key_len;

    if (n < 0 || url_key_len(x->key, base) != base ||
        base + sizeof VARIANT_SUFFIX + 4 > MAX_CACHE_KEY)
        return -1;
    uint64_t h = 0xcbf29ce484222325ULL;    /* FNV-1a */
    for (long i = 0; i < n; i++)
        h = (h ^ (unsigned char)now[i]) * 0x100000001b3ULL;
    return (int)(h % MAX_VARIANTS);
}

/* x->key becomes the URL's key (base bytes) with slot's suffix. */
static void
set_slot(struct exchange *x, size_t base, int slot)
{
    x->key_len = (int)base + snprintf(x->key + base, sizeof x->key - base, VARIANT_SUFFIX "%d", slot);
}

int
vary_lookup(struct exchange *x, struct cache_entry *e)
{
    /* Always from the URL's key: a lookup again after waiting for another
     * request starts over, since the slots may have changed meanwhile. */
    x->key_len = (int)url_key_len(x->key, (size_t)x->key_len);
    x->key[x->key_len] = '\0';
    if (cache_lookup(x->key, (size_t)x->key_len, e) != 1)
        return 0;
    int first = vary_matches(&x->req, e->vary) ? -1 : first_slot(x, e);
    if (first == -1)
        return 1;                               /* this one, or the variant takes the URL's key */
    cache_release(e);
    /* Every slot is looked at from the hashed one on (one emptied by an
     * eviction leaves no gap); a new variant goes to the first free one,
     * or, when all hold others, replaces the hashed one. */
    size_t base = (size_t)x->key_len;
    int target = -1;
    for (int k = 0; k < MAX_VARIANTS; k++) {
        int slot = (first + k) % MAX_VARIANTS;
        set_slot(x, base, slot);
        if (cache_lookup(x->key, (size_t)x->key_len, e) != 1) {
            if (target == -1)
                target = slot;
            continue;
        }
        if (vary_matches(&x->req, e->vary))
            return 1;
        cache_release(e);
    }
    set_slot(x, base, target != -1 ? target : first);
    return 2;
}

/* Delete a URL's entry and its variants. Returns 1 when one was there. */
int
vary_remove_url(const char *key, size_t len)
{
    char slot[MAX_CACHE_KEY + 16];
    len = url_key_len(key, len);
    int removed = cache_remove(key, len);

    if (len + sizeof VARIANT_SUFFIX + 4 > MAX_CACHE_KEY)
        return removed;
    for (int i = 0; i < MAX_VARIANTS; i++) {
        int n = snprintf(slot, sizeof slot, "%.*s" VARIANT_SUFFIX "%d", (int)len, key, i);
        removed |= cache_remove(slot, (size_t)n);
    }
    return removed;
}


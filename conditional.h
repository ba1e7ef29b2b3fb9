/*
 * conditional.h - the client's conditionals and Range against a stored
 * answer (conditional.cpp), RFC 9110 13 and 14.
 * Return convention: 1 or 0 for yes/no; enum values where there are three.
 */
#ifndef PIBL_CONDITIONAL_H
#define PIBL_CONDITIONAL_H

#include <stdint.h>
#include <time.h>

struct http_request;
struct http_response;

/* What request r's conditionals make of a stored answer (RFC 9110 13.2.2). */
enum cond_result { COND_SERVE, COND_NOT_MODIFIED };

/*
 * Evaluate If-None-Match and If-Modified-Since of a GET or HEAD r against
 * stored, received at time received: COND_NOT_MODIFIED for a 304, else
 * COND_SERVE. If-None-Match is read over all its lines and compared weakly;
 * "*" names any stored answer. Without Last-Modified, If-Modified-Since
 * compares with the stored Date or, lacking it, with received (RFC 9111
 * 4.3.2). A stored answer that is not a 2xx ignores them (13.2.1).
 * If-Match and If-Unmodified-Since are not a cache's to judge (RFC 9111
 * 4.3.2): such requests never reach here.
 */
int cond_evaluate(const struct http_request *r, const struct http_response *stored,
    time_t received);

/* What a GET's Range asks of a stored answer. */
enum cond_range { COND_RANGE_WHOLE, COND_RANGE_PART, COND_RANGE_UNSATISFIABLE };

/*
 * The Range of request r for a stored 200 of total bytes (RFC 9110 14.1.2,
 * 14.2): one range "a-b", "a-" or "-n" gives COND_RANGE_PART with the bytes
 * [*from, *from + *len); one that starts past the end (or "-0"),
 * COND_RANGE_UNSATISFIABLE. No Range, several ranges, a malformed field,
 * another unit, or an If-Range that does not hold (a strong entity tag, or
 * exactly a Last-Modified date a second or more older than the stored Date)
 * give COND_RANGE_WHOLE: the full 200.
 */
int cond_range(const struct http_request *r, const struct http_response *stored, uint64_t total,
    uint64_t *from, uint64_t *len);

#endif

/*
 * httpdate.h - HTTP-dates (httpdate.cpp, RFC 9110 5.6.7): reading the
 * three forms a recipient must accept, and writing the IMF-fixdate of the
 * Date field PIBL adds (RFC 9110 6.6.1).
 */
#ifndef PIBL_HTTPDATE_H
#define PIBL_HTTPDATE_H

#include "http.h"

#include <stddef.h>
#include <time.h>

#define HTTP_DATE_LEN 29              /* "Sun, 06 Nov 1994 08:49:37 GMT" */

/* An HTTP-date to time_t: IMF-fixdate, and the obsolete RFC 850 and
 * asctime forms; -1 when not one or before 1970. */
time_t http_parse_date(const char *v, size_t len);

/* The IMF-fixdate of t into out. Returns HTTP_DATE_LEN, or 0 (out empty)
 * for a year past 9999. */
size_t http_format_date(time_t t, char out[HTTP_DATE_LEN + 1]);

/* "Date: <IMF-fixdate of t>\r\n" into b; nothing for a year past 9999.
 * The text of the last second is kept per thread. */
void http_put_date(struct http_builder *b, time_t t);

#endif

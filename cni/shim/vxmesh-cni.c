// vxmesh-cni: the CNI plugin executable of vxmesh (docs/DESIGN.md §5).
//
// A shim in the literal sense: it reads the network configuration from stdin, collects the CNI_*
// environment variables, sends both to the vxmesh daemon over its unix control socket as one JSON
// line {"op":"cni","env":{...},"stdin":"..."}, and prints what the daemon answers
// ({"result":{"exitCode":N,"stdout":"..."}}), exiting with its exit code. The CNI semantics live
// in the daemon (cni/handler.ts); this program only moves bytes, so an ADD costs no Node start.
//
// Where the daemon is: the configuration's top-level "controlSocket" (an absolute path), else
// "runDir" + "/vxmesh.sock", else /run/vxmesh/vxmesh.sock. `vxmesh install-cni` writes
// "controlSocket" and "stateDir" into the conflist, so several daemons can share one machine.
//
// When the daemon cannot be reached (no socket, refused, closed without an answer, no answer in
// time, or an answer that is not a CNI result):
//   VERSION  is always answered here (it needs no daemon);
//   STATUS   error 50 (plugin not available);
//   ADD, CHECK, GC   error 11 (try again later);
//   DEL      the request line is written to <stateDir>/cni/del-queue/<containerID>:<ifname>.json
//            (temporary file, fsync, rename: never half-written; a later DEL of the same
//            attachment replaces it) and the DEL succeeds; the daemon completes it when it starts
//            (cni/queue.ts reads these files; keep the two in step).
//
// Built by node-gyp as an executable target (binding.gyp) into build/Release/vxmesh-cni.
// No allocation discipline beyond "free nothing, exit soon": the process lives for one call.

#define _GNU_SOURCE

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

extern char **environ;

#define DEFAULT_SOCKET "/run/vxmesh/vxmesh.sock"
#define DEFAULT_STATE_DIR "/var/lib/vxmesh"
#define SOCKET_NAME "vxmesh.sock"
#define QUEUE_SUBDIR "/cni/del-queue"
#define CURRENT_VERSION "1.1.0"
#define MAX_STDIN (1u << 20)
/** The daemon reads at most 1 MiB per request line, newline included (daemon/control-socket.ts). */
#define MAX_REQUEST (1024u * 1024u)
#define MAX_REPLY (16u << 20)
#define TIMEOUT_SECONDS 120
#define MAX_DEPTH 512

static const char *const SUPPORTED[] = {"0.4.0", "1.0.0", "1.1.0"};
#define N_SUPPORTED (sizeof SUPPORTED / sizeof SUPPORTED[0])

enum {
  ERR_INVALID_ENV = 4,
  ERR_IO = 5,
  ERR_DECODING = 6,
  ERR_INVALID_CONFIG = 7,
  ERR_TRY_AGAIN = 11,
  ERR_NOT_AVAILABLE = 50,
};

/* ------------------------------------------------------------------------------------------ */
/* Growing buffers                                                                            */
/* ------------------------------------------------------------------------------------------ */

struct buf {
  char *p;
  size_t len, cap;
};

static void oom(void) {
  static const char msg[] = "{\"cniVersion\":\"" CURRENT_VERSION "\",\"code\":5,\"msg\":\"vxmesh-cni: out of memory\"}\n";
  ssize_t r = write(STDOUT_FILENO, msg, sizeof msg - 1);
  (void)r;
  _exit(1);
}

static void buf_reserve(struct buf *b, size_t extra) {
  if (b->len + extra + 1 <= b->cap) return;
  size_t cap = b->cap == 0 ? 4096 : b->cap;
  while (cap < b->len + extra + 1) cap *= 2;
  char *p = realloc(b->p, cap);
  if (p == NULL) oom();
  b->p = p;
  b->cap = cap;
}

static void buf_add(struct buf *b, const char *s, size_t n) {
  buf_reserve(b, n);
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

static void buf_puts(struct buf *b, const char *s) { buf_add(b, s, strlen(s)); }

static void buf_printf(struct buf *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  buf_reserve(b, (size_t)n);
  va_start(ap, fmt);
  vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
}

/** Appends s[0..n) as a JSON string literal. Bytes >= 0x80 pass through (UTF-8 in, UTF-8 out). */
static void buf_json_string(struct buf *b, const char *s, size_t n) {
  buf_reserve(b, n + 2);
  b->p[b->len++] = '"';
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    char esc[8];
    const char *rep = NULL;
    switch (c) {
      case '"': rep = "\\\""; break;
      case '\\': rep = "\\\\"; break;
      case '\n': rep = "\\n"; break;
      case '\r': rep = "\\r"; break;
      case '\t': rep = "\\t"; break;
      case '\b': rep = "\\b"; break;
      case '\f': rep = "\\f"; break;
      default:
        if (c < 0x20 || c == 0x7f) {
          snprintf(esc, sizeof esc, "\\u%04x", c);
          rep = esc;
        }
    }
    if (rep != NULL) {
      buf_puts(b, rep);
    } else {
      buf_reserve(b, 1);
      b->p[b->len++] = (char)c;
    }
  }
  buf_reserve(b, 1);
  b->p[b->len++] = '"';
  b->p[b->len] = '\0';
}

/* ------------------------------------------------------------------------------------------ */
/* Output                                                                                     */
/* ------------------------------------------------------------------------------------------ */

static bool write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t r = write(fd, p, n);
    if (r < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += r;
    n -= (size_t)r;
  }
  return true;
}

/** Prints a CNI error object on stdout; returns the process exit code (1). */
static int cni_error(const char *version, int code, const char *msg, const char *details) {
  struct buf b = {0};
  buf_puts(&b, "{\"cniVersion\":");
  buf_json_string(&b, version, strlen(version));
  buf_printf(&b, ",\"code\":%d,\"msg\":", code);
  buf_json_string(&b, msg, strlen(msg));
  if (details != NULL && details[0] != '\0') {
    buf_puts(&b, ",\"details\":");
    buf_json_string(&b, details, strlen(details));
  }
  buf_puts(&b, "}\n");
  write_all(STDOUT_FILENO, b.p, b.len);
  fprintf(stderr, "vxmesh-cni: %s%s%s\n", msg, details != NULL && details[0] != '\0' ? ": " : "",
          details != NULL ? details : "");
  return 1;
}

/* ------------------------------------------------------------------------------------------ */
/* A minimal JSON reader: enough to find top-level members and decode strings                 */
/* ------------------------------------------------------------------------------------------ */

static const char *skip_ws(const char *p, const char *e) {
  while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
  return p;
}

/** p at '"'; returns the position after the closing quote, or NULL. */
static const char *skip_string(const char *p, const char *e) {
  if (p >= e || *p != '"') return NULL;
  for (p++; p < e; p++) {
    if (*p == '\\') {
      p++;
      continue;
    }
    if (*p == '"') return p + 1;
    if ((unsigned char)*p < 0x20) return NULL;
  }
  return NULL;
}

static const char *skip_value(const char *p, const char *e, int depth);

static const char *skip_container(const char *p, const char *e, int depth, char close, bool object) {
  if (depth > MAX_DEPTH) return NULL;
  p = skip_ws(p + 1, e);
  if (p < e && *p == close) return p + 1;
  for (;;) {
    if (object) {
      p = skip_string(p, e);
      if (p == NULL) return NULL;
      p = skip_ws(p, e);
      if (p >= e || *p != ':') return NULL;
      p = skip_ws(p + 1, e);
    }
    p = skip_value(p, e, depth + 1);
    if (p == NULL) return NULL;
    p = skip_ws(p, e);
    if (p >= e) return NULL;
    if (*p == close) return p + 1;
    if (*p != ',') return NULL;
    p = skip_ws(p + 1, e);
  }
}

/** p at the start of a value; returns the position after it, or NULL when it is malformed. */
static const char *skip_value(const char *p, const char *e, int depth) {
  if (p >= e) return NULL;
  switch (*p) {
    case '"': return skip_string(p, e);
    case '{': return skip_container(p, e, depth, '}', true);
    case '[': return skip_container(p, e, depth, ']', false);
    default: {
      const char *s = p;
      while (p < e && *p != '\0' && strchr("+-.0123456789eEtruefalsn", *p) != NULL) p++;
      return p > s ? p : NULL;
    }
  }
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static bool read_u16(const char *p, const char *e, unsigned *out) {
  if (e - p < 4) return false;
  unsigned v = 0;
  for (int i = 0; i < 4; i++) {
    int h = hexval(p[i]);
    if (h < 0) return false;
    v = v * 16 + (unsigned)h;
  }
  *out = v;
  return true;
}

static void put_utf8(struct buf *b, unsigned cp) {
  char u[4];
  size_t n;
  if (cp < 0x80) {
    u[0] = (char)cp;
    n = 1;
  } else if (cp < 0x800) {
    u[0] = (char)(0xc0 | (cp >> 6));
    u[1] = (char)(0x80 | (cp & 0x3f));
    n = 2;
  } else if (cp < 0x10000) {
    u[0] = (char)(0xe0 | (cp >> 12));
    u[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
    u[2] = (char)(0x80 | (cp & 0x3f));
    n = 3;
  } else {
    u[0] = (char)(0xf0 | (cp >> 18));
    u[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    u[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    u[3] = (char)(0x80 | (cp & 0x3f));
    n = 4;
  }
  buf_add(b, u, n);
}

/** Decodes the JSON string literal [p, e) (quotes included) into out; false when malformed. */
static bool decode_string(const char *p, const char *e, struct buf *out) {
  out->len = 0;
  buf_reserve(out, 0);
  out->p[0] = '\0';
  if (e - p < 2 || *p != '"' || e[-1] != '"') return false;
  e--;
  for (p++; p < e; p++) {
    if (*p != '\\') {
      buf_add(out, p, 1);
      continue;
    }
    if (++p >= e) return false;
    switch (*p) {
      case '"': buf_add(out, "\"", 1); break;
      case '\\': buf_add(out, "\\", 1); break;
      case '/': buf_add(out, "/", 1); break;
      case 'b': buf_add(out, "\b", 1); break;
      case 'f': buf_add(out, "\f", 1); break;
      case 'n': buf_add(out, "\n", 1); break;
      case 'r': buf_add(out, "\r", 1); break;
      case 't': buf_add(out, "\t", 1); break;
      case 'u': {
        unsigned cp;
        if (!read_u16(p + 1, e, &cp)) return false;
        p += 4;
        if (cp >= 0xd800 && cp <= 0xdbff) {
          unsigned lo;
          if (e - p >= 7 && p[1] == '\\' && p[2] == 'u' && read_u16(p + 3, e, &lo) && lo >= 0xdc00 && lo <= 0xdfff) {
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            p += 6;
          } else {
            cp = 0xfffd;  // a lone surrogate, as JavaScript would keep it; U+FFFD in UTF-8
          }
        } else if (cp >= 0xdc00 && cp <= 0xdfff) {
          cp = 0xfffd;
        }
        put_utf8(out, cp);
        break;
      }
      default: return false;
    }
  }
  return true;
}

/**
 * In the JSON object starting at p (after whitespace), finds member `key`; sets [*vs, *ve) to
 * its value. False when p is not a well-formed object (up to that member) or has no such member.
 */
static bool object_find(const char *p, const char *e, const char *key, const char **vs, const char **ve) {
  p = skip_ws(p, e);
  if (p >= e || *p != '{') return false;
  p = skip_ws(p + 1, e);
  if (p < e && *p == '}') return false;
  struct buf k = {0};
  for (;;) {
    const char *ks = p;
    p = skip_string(p, e);
    if (p == NULL || !decode_string(ks, p, &k)) break;
    p = skip_ws(p, e);
    if (p >= e || *p != ':') break;
    p = skip_ws(p + 1, e);
    const char *v = p;
    p = skip_value(p, e, 1);
    if (p == NULL) break;
    if (k.len == strlen(key) && memcmp(k.p, key, k.len) == 0) {
      *vs = v;
      *ve = p;
      free(k.p);
      return true;
    }
    p = skip_ws(p, e);
    if (p >= e || *p != ',') break;
    p = skip_ws(p + 1, e);
  }
  free(k.p);
  return false;
}

/** The string member `key` of the object at [p, e), decoded; NULL when absent or not a string. */
static char *object_string(const char *p, const char *e, const char *key, size_t *len) {
  const char *vs, *ve;
  if (!object_find(p, e, key, &vs, &ve) || *vs != '"') return NULL;
  struct buf out = {0};
  if (!decode_string(vs, ve, &out)) {
    free(out.p);
    return NULL;
  }
  if (len != NULL) *len = out.len;
  return out.p;
}

/* ------------------------------------------------------------------------------------------ */
/* Names                                                                                      */
/* ------------------------------------------------------------------------------------------ */

static bool is_supported(const char *v) {
  if (v == NULL) return false;
  for (size_t i = 0; i < N_SUPPORTED; i++) if (strcmp(v, SUPPORTED[i]) == 0) return true;
  return false;
}

/** Container IDs: [A-Za-z0-9][A-Za-z0-9_.-]* (the spec's rule, so no '/' and no ':'). */
static bool valid_container_id(const char *s) {
  if (s == NULL || s[0] == '\0') return false;
  for (const char *p = s; *p; p++) {
    char c = *p;
    bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    if (p == s ? !alnum : !(alnum || c == '_' || c == '.' || c == '-')) return false;
  }
  return true;
}

/** Interface names: 1-15 bytes, not "." or "..", no '/', ':' or whitespace. */
static bool valid_ifname(const char *s) {
  size_t n = s == NULL ? 0 : strlen(s);
  if (n == 0 || n > 15 || strcmp(s, ".") == 0 || strcmp(s, "..") == 0) return false;
  for (const char *p = s; *p; p++) {
    if (*p == '/' || *p == ':' || *p == ' ' || (*p >= '\t' && *p <= '\r')) return false;
  }
  return true;
}

/* ------------------------------------------------------------------------------------------ */
/* Talking to the daemon                                                                      */
/* ------------------------------------------------------------------------------------------ */

/**
 * Sends `req` to the socket and reads one answer line into `reply`. False (with `why`) when the
 * daemon is not reachable or gives no answer.
 */
static bool ask_daemon(const char *path, const struct buf *req, struct buf *reply, char *why, size_t whylen) {
  struct sockaddr_un addr;
  memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  if (strlen(path) >= sizeof addr.sun_path) {
    snprintf(why, whylen, "%s: the path is longer than a unix socket path may be", path);
    return false;
  }
  strcpy(addr.sun_path, path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    snprintf(why, whylen, "socket: %s", strerror(errno));
    return false;
  }
  struct timeval tv = {.tv_sec = TIMEOUT_SECONDS, .tv_usec = 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  int r;
  do {
    r = connect(fd, (struct sockaddr *)&addr, sizeof addr);
  } while (r < 0 && errno == EINTR);
  if (r < 0) {
    snprintf(why, whylen, "connecting to %s: %s", path, strerror(errno));
    close(fd);
    return false;
  }
  const char *p = req->p;
  size_t left = req->len;
  while (left > 0) {
    ssize_t n = send(fd, p, left, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      snprintf(why, whylen, "sending to %s: %s", path, strerror(errno));
      close(fd);
      return false;
    }
    p += n;
    left -= (size_t)n;
  }
  // No shutdown(SHUT_WR): the daemon's socket would end its side on our FIN before answering.
  reply->len = 0;
  for (;;) {
    buf_reserve(reply, 65536);
    ssize_t n = recv(fd, reply->p + reply->len, reply->cap - reply->len - 1, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        snprintf(why, whylen, "no answer from %s within %d s", path, TIMEOUT_SECONDS);
      } else {
        snprintf(why, whylen, "reading from %s: %s", path, strerror(errno));
      }
      close(fd);
      return false;
    }
    if (n == 0) {
      snprintf(why, whylen, "%s closed the connection without an answer", path);
      close(fd);
      return false;
    }
    char *nl = memchr(reply->p + reply->len, '\n', (size_t)n);
    reply->len += (size_t)n;
    reply->p[reply->len] = '\0';
    if (nl != NULL) {
      reply->len = (size_t)(nl - reply->p);
      reply->p[reply->len] = '\0';
      close(fd);
      return true;
    }
    if (reply->len > MAX_REPLY) {
      snprintf(why, whylen, "the answer from %s is longer than %u bytes", path, MAX_REPLY);
      close(fd);
      return false;
    }
  }
}

/* ------------------------------------------------------------------------------------------ */
/* The DEL queue                                                                              */
/* ------------------------------------------------------------------------------------------ */

/**
 * The owner files in the state dir get: the state dir's own. The runtime runs this shim as root,
 * while the daemon may run as another user without CAP_DAC_OVERRIDE (deploy/); it must still be
 * able to read and remove what is queued for it. uid -1: leave ownership alone.
 */
struct owner {
  uid_t uid;
  gid_t gid;
};

static struct owner state_dir_owner(const char *state_dir) {
  struct stat st;
  struct owner o = {(uid_t)-1, (gid_t)-1};
  if (stat(state_dir, &st) == 0 && (st.st_uid != geteuid() || st.st_gid != getegid())) {
    o.uid = st.st_uid;
    o.gid = st.st_gid;
  }
  return o;
}

/** Makes `dir` and its missing parents; the ones at or below `owned_from` get owner `o`. */
static bool mkdir_p(const char *dir, size_t owned_from, struct owner o, char *why, size_t whylen) {
  char path[4096];
  if (snprintf(path, sizeof path, "%s", dir) >= (int)sizeof path) {
    snprintf(why, whylen, "%.900s: path too long", dir);
    return false;
  }
  for (char *p = path + 1;; p++) {
    if (*p == '/' || *p == '\0') {
      char saved = *p;
      *p = '\0';
      if (mkdir(path, 0700) < 0) {
        if (errno != EEXIST) {
          snprintf(why, whylen, "creating %.900s: %s", path, strerror(errno));
          return false;
        }
      } else if (o.uid != (uid_t)-1 && (size_t)(p - path) > owned_from && chown(path, o.uid, o.gid) < 0) {
        snprintf(why, whylen, "handing %.900s to uid %d: %s", path, (int)o.uid, strerror(errno));
        return false;
      }
      *p = saved;
      if (saved == '\0') return true;
    }
  }
}

/** Writes the request to <stateDir>/cni/del-queue/<cid>:<ifname>.json, atomically and durably. */
static bool queue_del(const char *state_dir, const char *cid, const char *ifname, const struct buf *req,
                      char *final, size_t final_len, char *why, size_t whylen) {
  char dir[4096], tmp[4096 + 64];
  if (snprintf(dir, sizeof dir, "%s%s", state_dir, QUEUE_SUBDIR) >= (int)sizeof dir) {
    snprintf(why, whylen, "state dir path too long");
    return false;
  }
  if (strlen(cid) + strlen(ifname) + 16 > 255) {
    snprintf(why, whylen, "container ID too long for a queue file name");
    return false;
  }
  struct owner o = state_dir_owner(state_dir);
  if (!mkdir_p(dir, strlen(state_dir), o, why, whylen)) return false;
  snprintf(final, final_len, "%s/%s:%s.json", dir, cid, ifname);
  snprintf(tmp, sizeof tmp, "%s/.%s:%s.%ld.tmp", dir, cid, ifname, (long)getpid());
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    snprintf(why, whylen, "creating %.900s: %s", tmp, strerror(errno));
    return false;
  }
  bool ok = (o.uid == (uid_t)-1 || fchown(fd, o.uid, o.gid) == 0) && write_all(fd, req->p, req->len) && fsync(fd) == 0;
  int err = errno;
  if (close(fd) < 0 && ok) {
    ok = false;
    err = errno;
  }
  if (!ok || rename(tmp, final) < 0) {
    if (ok) err = errno;
    snprintf(why, whylen, "writing %.900s: %s", final, strerror(err));
    unlink(tmp);
    return false;
  }
  int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
  return true;
}

/* ------------------------------------------------------------------------------------------ */
/* main                                                                                       */
/* ------------------------------------------------------------------------------------------ */

/** {"op":"cni","env":{<every CNI_* variable>},"stdin":"<the configuration>"} and a newline. */
static void build_request(struct buf *req, const char *stdin_text, size_t stdin_len) {
  buf_puts(req, "{\"op\":\"cni\",\"env\":{");
  bool first = true;
  for (char **e = environ; *e != NULL; e++) {
    if (strncmp(*e, "CNI_", 4) != 0) continue;
    const char *eq = strchr(*e, '=');
    if (eq == NULL) continue;
    if (!first) buf_puts(req, ",");
    first = false;
    buf_json_string(req, *e, (size_t)(eq - *e));
    buf_puts(req, ":");
    buf_json_string(req, eq + 1, strlen(eq + 1));
  }
  buf_puts(req, "},\"stdin\":");
  buf_json_string(req, stdin_text, stdin_len);
  buf_puts(req, "}\n");
}

static bool read_stdin(struct buf *in) {
  for (;;) {
    buf_reserve(in, 65536);
    ssize_t n = read(STDIN_FILENO, in->p + in->len, in->cap - in->len - 1);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (n == 0) return true;
    in->len += (size_t)n;
    in->p[in->len] = '\0';
    if (in->len > MAX_STDIN) {
      errno = EFBIG;
      return false;
    }
  }
}

int main(void) {
  struct buf in = {0};
  buf_reserve(&in, 0);
  in.p[0] = '\0';
  bool stdin_ok = read_stdin(&in);
  int stdin_errno = errno;
  const char *ie = in.p + in.len;

  char *conf_version = object_string(in.p, ie, "cniVersion", NULL);
  const char *errver = is_supported(conf_version) ? conf_version : CURRENT_VERSION;

  const char *cmd = getenv("CNI_COMMAND");
  if (cmd == NULL || cmd[0] == '\0') {
    fprintf(stderr, "vxmesh-cni: the CNI plugin of vxmesh; it hands each call to the vxmesh daemon's control socket\n"
                    "CNI protocol versions supported: 0.4.0, 1.0.0, 1.1.0\n");
    return cni_error(errver, ERR_INVALID_ENV, "required env variables [CNI_COMMAND] missing", "");
  }
  bool is_add = strcmp(cmd, "ADD") == 0, is_del = strcmp(cmd, "DEL") == 0;
  bool is_status = strcmp(cmd, "STATUS") == 0, is_version = strcmp(cmd, "VERSION") == 0;
  if (!is_add && !is_del && !is_status && !is_version && strcmp(cmd, "CHECK") != 0 && strcmp(cmd, "GC") != 0) {
    char msg[256];
    snprintf(msg, sizeof msg, "unknown CNI_COMMAND: %.200s", cmd);
    return cni_error(errver, ERR_INVALID_ENV, msg, "valid: ADD, DEL, CHECK, VERSION, GC, STATUS");
  }

  if (is_version) {
    const char *asked = conf_version != NULL && conf_version[0] != '\0' ? conf_version : CURRENT_VERSION;
    struct buf out = {0};
    buf_puts(&out, "{\"cniVersion\":");
    buf_json_string(&out, asked, strlen(asked));
    buf_puts(&out, ",\"supportedVersions\":[");
    for (size_t i = 0; i < N_SUPPORTED; i++) buf_printf(&out, "%s\"%s\"", i == 0 ? "" : ",", SUPPORTED[i]);
    buf_puts(&out, "]}\n");
    return write_all(STDOUT_FILENO, out.p, out.len) ? 0 : 1;
  }
  if (!stdin_ok) {
    return cni_error(errver, ERR_IO, "error reading the network configuration from stdin",
                     stdin_errno == EFBIG ? "more than 1 MiB" : strerror(stdin_errno));
  }

  // Without a decodable configuration there is no telling where the daemon is.
  {
    const char *p = skip_ws(in.p, ie);
    const char *end = p < ie && *p == '{' ? skip_value(p, ie, 0) : NULL;
    if (end == NULL || skip_ws(end, ie) != ie) {
      return cni_error(errver, ERR_DECODING, "error decoding network config: not a JSON object", "");
    }
  }

  // The request line.
  struct buf req = {0};
  build_request(&req, in.p, in.len);
  // The daemon reads request lines of at most 1 MiB (daemon/control-socket.ts) and drops the
  // connection on a longer one. A DEL needs no more than the network's name and version (it
  // works without prevResult), so a too large one is sent with just those.
  if (req.len > MAX_REQUEST && is_del) {
    char *name = object_string(in.p, ie, "name", NULL);
    struct buf small = {0};
    buf_puts(&small, "{\"cniVersion\":");
    buf_json_string(&small, errver, strlen(errver));
    buf_puts(&small, ",\"name\":");
    buf_json_string(&small, name != NULL ? name : "", name != NULL ? strlen(name) : 0);
    buf_puts(&small, "}");
    req.len = 0;
    build_request(&req, small.p, small.len);
  }
  if (req.len > MAX_REQUEST) {
    return cni_error(errver, ERR_INVALID_CONFIG, "the network configuration is too large for the vxmesh daemon's control socket",
                     "requests are limited to 1 MiB");
  }


  // Where the daemon is.
  char *sock = object_string(in.p, ie, "controlSocket", NULL);
  if (sock == NULL || sock[0] == '\0') {
    char *run_dir = object_string(in.p, ie, "runDir", NULL);
    if (run_dir != NULL && run_dir[0] != '\0') {
      struct buf s = {0};
      buf_printf(&s, "%s/%s", run_dir, SOCKET_NAME);
      sock = s.p;
    } else {
      sock = DEFAULT_SOCKET;
    }
  }

  struct buf reply = {0};
  char why[1024] = "";
  if (ask_daemon(sock, &req, &reply, why, sizeof why)) {
    const char *re = reply.p + reply.len;
    const char *rs, *rend;
    if (object_find(reply.p, re, "result", &rs, &rend)) {
      const char *cs, *ce, *ss, *se;
      struct buf out = {0};
      if (object_find(rs, rend, "exitCode", &cs, &ce) && object_find(rs, rend, "stdout", &ss, &se) &&
          *ss == '"' && decode_string(ss, se, &out)) {
        char num[32];
        size_t nl = (size_t)(ce - cs) < sizeof num - 1 ? (size_t)(ce - cs) : sizeof num - 1;
        memcpy(num, cs, nl);
        num[nl] = '\0';
        char *end;
        long code = strtol(num, &end, 10);
        if (end != num && *end == '\0' && code >= 0 && code <= 255) {
          if (out.len > 0) {
            if (out.p[out.len - 1] != '\n') buf_add(&out, "\n", 1);
            write_all(STDOUT_FILENO, out.p, out.len);
          }
          return (int)code;
        }
      }
      snprintf(why, sizeof why, "%s answered something that is not a CNI result", sock);
    } else {
      char *err = object_string(reply.p, re, "error", NULL);
      snprintf(why, sizeof why, "%s answered: %.900s", sock, err != NULL ? err : reply.p);
    }
  }

  // The daemon is not there (or not able to take CNI calls).
  if (is_status) return cni_error(errver, ERR_NOT_AVAILABLE, "the vxmesh daemon is not reachable", why);
  if (!is_del) return cni_error(errver, ERR_TRY_AGAIN, "the vxmesh daemon is not reachable; try again later", why);

  const char *cid = getenv("CNI_CONTAINERID");
  const char *ifname = getenv("CNI_IFNAME");
  if (cid == NULL || cid[0] == '\0' || ifname == NULL || ifname[0] == '\0') {
    return cni_error(errver, ERR_INVALID_ENV, "required env variables [CNI_CONTAINERID,CNI_IFNAME] missing", "");
  }
  if (!valid_container_id(cid)) return cni_error(errver, ERR_INVALID_ENV, "CNI_CONTAINERID: invalid characters in containerID", cid);
  if (!valid_ifname(ifname)) return cni_error(errver, ERR_INVALID_ENV, "CNI_IFNAME: invalid interface name", ifname);
  char *state_dir = object_string(in.p, ie, "stateDir", NULL);
  if (state_dir == NULL || state_dir[0] != '/') state_dir = DEFAULT_STATE_DIR;
  char final[4096 + 64];
  char qwhy[1024];
  if (!queue_del(state_dir, cid, ifname, &req, final, sizeof final, qwhy, sizeof qwhy)) {
    char details[2200];
    snprintf(details, sizeof details, "%s; queueing the DEL failed: %s", why, qwhy);
    return cni_error(errver, ERR_TRY_AGAIN, "the vxmesh daemon is not reachable; try again later", details);
  }
  fprintf(stderr, "vxmesh-cni: the vxmesh daemon is not reachable (%s); DEL queued in %s, the daemon completes it when it starts\n",
          why, final);
  return 0;
}

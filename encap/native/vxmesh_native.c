// vxmesh native shim: the few Linux syscalls Node does not expose (TAP devices, batched UDP
// I/O with recvmmsg/sendmmsg, poll on raw fds, eventfd, setns around socket creation, dropping
// capabilities on every thread). The contract is the NativeShim interface in encap/native.ts;
// every policy decision stays in TypeScript.
//
// Ground rules:
// - No allocation per packet: batched calls use stack arrays sized by BATCH_MAX and clamp
//   `max`/`count` to it.
// - No mutable global state, so the module can be loaded in several worker threads. The one
//   exception is the capability drop, a process-wide operation with its own lock.
// - Bad arguments are caller bugs and throw TypeError/RangeError before any syscall.
//   EAGAIN never throws; other syscall failures throw an Error whose `code` is the errno name
//   ("EBADF") and whose message is "<call>: <strerror>".

#define _GNU_SOURCE

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>

#include <linux/capability.h>
#include <linux/if_tun.h>
#include <linux/udp.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif

#include <node_api.h>

/** Upper bound of one batched call; callers may pass more, the shim clamps. */
#define BATCH_MAX 256
/** Upper bound on the fds of one pollIn call (the pollfd array lives on the stack). */
#define POLL_MAX_FDS 256
/** lens[i] marker for a datagram or frame longer than its slot. */
#define LEN_TRUNCATED 0xFFFFFFFFu

/* ------------------------------------------------------------------------------------------ */
/* Errors                                                                                     */
/* ------------------------------------------------------------------------------------------ */

/** The symbolic name of an errno value ("EBADF"). */
static const char *errno_name(int err) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
  const char *name = strerrorname_np(err);
  if (name != NULL) return name;
  return "EUNKNOWN";
#else
  // Older C libraries lack strerrorname_np; cover what these calls can actually return.
  switch (err) {
    case EACCES: return "EACCES";
    case EADDRINUSE: return "EADDRINUSE";
    case EADDRNOTAVAIL: return "EADDRNOTAVAIL";
    case EAFNOSUPPORT: return "EAFNOSUPPORT";
    case EAGAIN: return "EAGAIN";
    case EBADF: return "EBADF";
    case EBADFD: return "EBADFD";
    case EBUSY: return "EBUSY";
    case ECONNREFUSED: return "ECONNREFUSED";
    case EFAULT: return "EFAULT";
    case EHOSTUNREACH: return "EHOSTUNREACH";
    case EINTR: return "EINTR";
    case EINVAL: return "EINVAL";
    case EIO: return "EIO";
    case EMFILE: return "EMFILE";
    case EMSGSIZE: return "EMSGSIZE";
    case ENETDOWN: return "ENETDOWN";
    case ENETUNREACH: return "ENETUNREACH";
    case ENFILE: return "ENFILE";
    case ENOBUFS: return "ENOBUFS";
    case ENODEV: return "ENODEV";
    case ENOENT: return "ENOENT";
    case ENOMEM: return "ENOMEM";
    case ENOTSOCK: return "ENOTSOCK";
    case ENXIO: return "ENXIO";
    case EPERM: return "EPERM";
    default: return "EUNKNOWN";
  }
#endif
}

/** Throws Error("<call>: <strerror>") with code = errno name and syscall = call. */
static void throw_errno(napi_env env, const char *call, int err) {
  char text[128];
  char message[256];
  // GNU strerror_r: thread-safe, returns a pointer that may or may not be `text`.
  const char *desc = strerror_r(err, text, sizeof text);
  snprintf(message, sizeof message, "%s: %s", call, desc);

  napi_value code, msg, error, syscall;
  if (napi_create_string_utf8(env, errno_name(err), NAPI_AUTO_LENGTH, &code) != napi_ok ||
      napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &msg) != napi_ok ||
      napi_create_error(env, code, msg, &error) != napi_ok) {
    napi_throw_error(env, errno_name(err), message);
    return;
  }
  if (napi_create_string_utf8(env, call, NAPI_AUTO_LENGTH, &syscall) == napi_ok) {
    napi_set_named_property(env, error, "syscall", syscall);
  }
  napi_throw(env, error);
}

enum arg_error { ARG_TYPE, ARG_RANGE };

/** Throws a TypeError or RangeError with a printf-style message. */
static void throw_arg(napi_env env, enum arg_error kind, const char *fmt, ...) {
  char message[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(message, sizeof message, fmt, ap);
  va_end(ap);
  if (kind == ARG_TYPE) {
    napi_throw_type_error(env, NULL, message);
  } else {
    napi_throw_range_error(env, NULL, message);
  }
}

/** Turns a failed N-API call into a JS exception unless one is already pending. */
static void throw_napi(napi_env env, napi_status status) {
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (pending) return;
  const napi_extended_error_info *info = NULL;
  napi_get_last_error_info(env, &info);
  char message[160];
  snprintf(message, sizeof message, "vxmesh_native: N-API call failed (%d: %s)", (int)status,
           info != NULL && info->error_message != NULL ? info->error_message : "unknown");
  napi_throw_error(env, NULL, message);
}

/** Evaluates an N-API call; on failure throws and returns NULL from the enclosing callback. */
#define NAPI_CHECK(env, call)                  \
  do {                                         \
    napi_status status_ = (call);              \
    if (status_ != napi_ok) {                  \
      throw_napi((env), status_);              \
      return NULL;                             \
    }                                          \
  } while (0)

/** Same as NAPI_CHECK for helpers that return false on failure. */
#define NAPI_CHECK_BOOL(env, call)             \
  do {                                         \
    napi_status status_ = (call);              \
    if (status_ != napi_ok) {                  \
      throw_napi((env), status_);              \
      return false;                            \
    }                                          \
  } while (0)

static bool is_again(int err) { return err == EAGAIN || err == EWOULDBLOCK; }

/* ------------------------------------------------------------------------------------------ */
/* Arguments                                                                                  */
/* ------------------------------------------------------------------------------------------ */

/** Fetches exactly `n` arguments; missing ones read as undefined. */
static bool get_args(napi_env env, napi_callback_info info, size_t n, napi_value *argv) {
  size_t argc = n;
  NAPI_CHECK_BOOL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  return true;
}

/** An integral JS number within [min, max]. */
static bool arg_int(napi_env env, napi_value v, const char *name, int64_t min, int64_t max,
                    int64_t *out) {
  napi_valuetype type;
  NAPI_CHECK_BOOL(env, napi_typeof(env, v, &type));
  if (type != napi_number) {
    throw_arg(env, ARG_TYPE, "%s must be a number", name);
    return false;
  }
  double d;
  NAPI_CHECK_BOOL(env, napi_get_value_double(env, v, &d));
  // The range test first also rejects NaN and infinities before the cast.
  if (!(d >= (double)min && d <= (double)max) || d != (double)(int64_t)d) {
    throw_arg(env, ARG_RANGE, "%s must be an integer from %lld to %lld", name, (long long)min,
              (long long)max);
    return false;
  }
  *out = (int64_t)d;
  return true;
}

static bool arg_fd(napi_env env, napi_value v, int *out) {
  int64_t fd;
  if (!arg_int(env, v, "fd", 0, INT_MAX, &fd)) return false;
  *out = (int)fd;
  return true;
}

static bool arg_u32(napi_env env, napi_value v, const char *name, uint32_t *out) {
  int64_t x;
  if (!arg_int(env, v, name, 0, UINT32_MAX, &x)) return false;
  *out = (uint32_t)x;
  return true;
}

static const char *typed_array_name(napi_typedarray_type type) {
  switch (type) {
    case napi_uint8_array: return "Uint8Array";
    case napi_uint16_array: return "Uint16Array";
    case napi_uint32_array: return "Uint32Array";
    case napi_int32_array: return "Int32Array";
    default: return "typed array";
  }
}

/** A typed array of exactly the given kind; yields its data pointer and element count. */
static bool arg_typed(napi_env env, napi_value v, const char *name, napi_typedarray_type want,
                      void **data, size_t *length) {
  bool is_typed = false;
  NAPI_CHECK_BOOL(env, napi_is_typedarray(env, v, &is_typed));
  napi_typedarray_type type = napi_int8_array;
  if (is_typed) {
    // data is already adjusted by the view's byteOffset.
    NAPI_CHECK_BOOL(env, napi_get_typedarray_info(env, v, &type, length, data, NULL, NULL));
  }
  if (!is_typed || type != want) {
    throw_arg(env, ARG_TYPE, "%s must be a %s", name, typed_array_name(want));
    return false;
  }
  return true;
}

/** A string of 1 to size-1 UTF-8 bytes, copied NUL-terminated into buf. */
static bool arg_string(napi_env env, napi_value v, const char *name, char *buf, size_t size) {
  napi_valuetype type;
  NAPI_CHECK_BOOL(env, napi_typeof(env, v, &type));
  if (type != napi_string) {
    throw_arg(env, ARG_TYPE, "%s must be a string", name);
    return false;
  }
  size_t len;
  NAPI_CHECK_BOOL(env, napi_get_value_string_utf8(env, v, NULL, 0, &len));
  if (len == 0 || len >= size) {
    throw_arg(env, ARG_RANGE, "%s must be 1 to %zu bytes", name, size - 1);
    return false;
  }
  NAPI_CHECK_BOOL(env, napi_get_value_string_utf8(env, v, buf, size, &len));
  return true;
}

/** Like arg_typed, but undefined yields data = NULL. */
static bool opt_typed(napi_env env, napi_value v, const char *name, napi_typedarray_type want,
                      void **data, size_t *length) {
  napi_valuetype type;
  NAPI_CHECK_BOOL(env, napi_typeof(env, v, &type));
  if (type == napi_undefined) {
    *data = NULL;
    *length = 0;
    return true;
  }
  return arg_typed(env, v, name, want, data, length);
}

/** Every array in a batch must hold at least n entries. */
static bool check_entries(napi_env env, const char *name, size_t length, size_t n) {
  if (length < n) {
    throw_arg(env, ARG_RANGE, "%s has %zu entries, the batch needs %zu", name, length, n);
    return false;
  }
  return true;
}

/** Slots base + i*stride .. +stride for i < n must lie inside the slab. */
static bool check_slots(napi_env env, size_t slab_len, uint32_t base, uint32_t stride, size_t n) {
  if (n == 0) return true;
  if (stride == 0) {
    throw_arg(env, ARG_RANGE, "stride must be at least 1");
    return false;
  }
  // 64-bit arithmetic: base, stride and n are at most 2^32, 2^32 and 2^8.
  uint64_t end = (uint64_t)base + (uint64_t)stride * n;
  if (end > slab_len) {
    throw_arg(env, ARG_RANGE, "%zu slots of %u bytes from offset %u overrun the %zu-byte slab",
              n, stride, base, slab_len);
    return false;
  }
  return true;
}

/** Spans offs[i] .. offs[i]+lens[i] for i < n must lie inside the slab. */
static bool check_spans(napi_env env, size_t slab_len, const uint32_t *offs,
                        const uint32_t *lens, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if ((uint64_t)offs[i] + lens[i] > slab_len) {
      throw_arg(env, ARG_RANGE, "entry %zu (offset %u, length %u) overruns the %zu-byte slab", i,
                offs[i], lens[i], slab_len);
      return false;
    }
  }
  return true;
}

/** An optional boolean property of an options object (undefined = default false). */
static bool opt_bool(napi_env env, napi_value obj, const char *key, bool *out) {
  *out = false;
  napi_value v;
  napi_valuetype type;
  NAPI_CHECK_BOOL(env, napi_get_named_property(env, obj, key, &v));
  NAPI_CHECK_BOOL(env, napi_typeof(env, v, &type));
  if (type == napi_undefined) return true;
  if (type != napi_boolean) {
    throw_arg(env, ARG_TYPE, "options.%s must be a boolean", key);
    return false;
  }
  NAPI_CHECK_BOOL(env, napi_get_value_bool(env, v, out));
  return true;
}

static size_t clamp_batch(uint32_t n) { return n > BATCH_MAX ? BATCH_MAX : n; }

/* ------------------------------------------------------------------------------------------ */
/* Return values                                                                              */
/* ------------------------------------------------------------------------------------------ */

static napi_value ret_u32(napi_env env, uint32_t v) {
  napi_value out;
  NAPI_CHECK(env, napi_create_uint32(env, v, &out));
  return out;
}

static napi_value ret_int(napi_env env, int32_t v) {
  napi_value out;
  NAPI_CHECK(env, napi_create_int32(env, v, &out));
  return out;
}

static napi_value ret_undefined(napi_env env) {
  napi_value out;
  NAPI_CHECK(env, napi_get_undefined(env, &out));
  return out;
}

/* ------------------------------------------------------------------------------------------ */
/* TAP                                                                                        */
/* ------------------------------------------------------------------------------------------ */

/** tapOpen(name, options?) -> { fd, name } */
static napi_value tap_open(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!get_args(env, info, 2, argv)) return NULL;

  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  if (!arg_string(env, argv[0], "name", ifr.ifr_name, IFNAMSIZ)) return NULL;
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI;

  napi_valuetype type;
  NAPI_CHECK(env, napi_typeof(env, argv[1], &type));
  if (type == napi_object) {
    bool vnet_hdr, multi_queue;
    if (!opt_bool(env, argv[1], "vnetHdr", &vnet_hdr)) return NULL;
    if (!opt_bool(env, argv[1], "multiQueue", &multi_queue)) return NULL;
    if (vnet_hdr) ifr.ifr_flags |= IFF_VNET_HDR;
    if (multi_queue) ifr.ifr_flags |= IFF_MULTI_QUEUE;
  } else if (type != napi_undefined && type != napi_null) {
    throw_arg(env, ARG_TYPE, "options must be an object");
    return NULL;
  }

  int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    throw_errno(env, "open(/dev/net/tun)", errno);
    return NULL;
  }
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
    int err = errno;
    close(fd);
    throw_errno(env, "ioctl(TUNSETIFF)", err);
    return NULL;
  }

  // The fd is ours until the object reaches JS; close it if building the object fails.
  napi_value result, fd_value, name_value;
  if (napi_create_object(env, &result) != napi_ok ||
      napi_create_int32(env, fd, &fd_value) != napi_ok ||
      napi_create_string_utf8(env, ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ),
                              &name_value) != napi_ok ||
      napi_set_named_property(env, result, "fd", fd_value) != napi_ok ||
      napi_set_named_property(env, result, "name", name_value) != napi_ok) {
    close(fd);
    throw_napi(env, napi_generic_failure);
    return NULL;
  }
  return result;
}

/** readFrames(fd, slab, base, stride, max, lens) -> frames read */
static napi_value read_frames(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  if (!get_args(env, info, 6, argv)) return NULL;

  int fd;
  uint8_t *slab;
  uint32_t *lens;
  size_t slab_len, lens_len;
  uint32_t base, stride, max;
  if (!arg_fd(env, argv[0], &fd) ||
      !arg_typed(env, argv[1], "slab", napi_uint8_array, (void **)&slab, &slab_len) ||
      !arg_u32(env, argv[2], "base", &base) || !arg_u32(env, argv[3], "stride", &stride) ||
      !arg_u32(env, argv[4], "max", &max) ||
      !arg_typed(env, argv[5], "lens", napi_uint32_array, (void **)&lens, &lens_len)) {
    return NULL;
  }
  size_t n = clamp_batch(max);
  if (!check_entries(env, "lens", lens_len, n) || !check_slots(env, slab_len, base, stride, n)) {
    return NULL;
  }

  // tun silently cuts a frame to the buffer it is given and returns the cut length, so a
  // frame that exactly fills the slot would look like one that did not fit. A one-byte spill
  // iovec after the slot tells them apart: a cut frame spills into it.
  uint8_t spill;
  size_t got = 0;
  while (got < n) {
    struct iovec iov[2] = {
        {.iov_base = slab + base + (size_t)stride * got, .iov_len = stride},
        {.iov_base = &spill, .iov_len = 1},
    };
    ssize_t r = readv(fd, iov, 2);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (is_again(errno)) break;
      throw_errno(env, "readv", errno);
      return NULL;
    }
    lens[got] = (size_t)r > stride ? LEN_TRUNCATED : (uint32_t)r;
    got++;
  }
  return ret_u32(env, (uint32_t)got);
}

/** Errors that concern the descriptor rather than one frame or datagram: skipping would not help. */
static bool is_fd_error(int err) {
  return err == EBADF || err == ENOTSOCK || err == EFAULT;
}

/**
 * writeFrames(fd, slab, offs, lens, count, errors, hdrs?, hdrLen?) -> entries consumed: written,
 * or skipped after an error; stops at EAGAIN (the TAP's queue is full). A frame the kernel
 * refuses (EIO while the TAP is down, EINVAL for a header it rejects) is skipped, its lens[i]
 * set to 0 and errors[0] incremented; only descriptor errors throw. No batch limit: nothing
 * here is sized by the batch. With hdrs, frame i is preceded by
 * hdrs[i*hdrLen .. +hdrLen) in the same writev: how virtio-net headers reach a TAP opened with
 * IFF_VNET_HDR without moving frames.
 */
static napi_value write_frames(napi_env env, napi_callback_info info) {
  napi_value argv[8];
  if (!get_args(env, info, 8, argv)) return NULL;

  int fd;
  uint8_t *slab, *hdrs;
  uint32_t *offs, *lens, *errors;
  size_t slab_len, offs_len, lens_len, errors_len, hdrs_len = 0;
  uint32_t count, hdr_len = 0;
  napi_valuetype hdr_len_type;
  if (!arg_fd(env, argv[0], &fd) ||
      !arg_typed(env, argv[1], "slab", napi_uint8_array, (void **)&slab, &slab_len) ||
      !arg_typed(env, argv[2], "offs", napi_uint32_array, (void **)&offs, &offs_len) ||
      !arg_typed(env, argv[3], "lens", napi_uint32_array, (void **)&lens, &lens_len) ||
      !arg_u32(env, argv[4], "count", &count) ||
      !arg_typed(env, argv[5], "errors", napi_uint32_array, (void **)&errors, &errors_len) ||
      !opt_typed(env, argv[6], "hdrs", napi_uint8_array, (void **)&hdrs, &hdrs_len) ||
      napi_typeof(env, argv[7], &hdr_len_type) != napi_ok ||
      (hdr_len_type != napi_undefined && !arg_u32(env, argv[7], "hdrLen", &hdr_len))) {
    return NULL;
  }
  size_t n = count;
  if (!check_entries(env, "offs", offs_len, n) || !check_entries(env, "lens", lens_len, n) ||
      !check_entries(env, "errors", errors_len, 1) || !check_spans(env, slab_len, offs, lens, n)) {
    return NULL;
  }
  if (hdrs == NULL) hdr_len = 0;
  if ((uint64_t)hdr_len * n > hdrs_len) {
    throw_arg(env, ARG_RANGE, "hdrs holds %zu bytes, %zu headers of %u need more", hdrs_len, n, hdr_len);
    return NULL;
  }

  size_t done = 0;
  while (done < n) {
    struct iovec iov[2] = {
        {.iov_base = hdrs == NULL ? NULL : hdrs + (size_t)hdr_len * done, .iov_len = hdr_len},
        {.iov_base = slab + offs[done], .iov_len = lens[done]},
    };
    ssize_t r = hdr_len == 0 ? writev(fd, &iov[1], 1) : writev(fd, iov, 2);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (is_again(errno)) break;
      if (is_fd_error(errno)) {
        throw_errno(env, "writev", errno);
        return NULL;
      }
      lens[done] = 0;
      errors[0]++;
    }
    done++;
  }
  return ret_u32(env, (uint32_t)done);
}

/* ------------------------------------------------------------------------------------------ */
/* UDP                                                                                        */
/* ------------------------------------------------------------------------------------------ */

/** Closes fd (keeping the original error) and throws for `call`. */
static void fail_and_close(napi_env env, int fd, const char *call) {
  int err = errno;
  close(fd);
  throw_errno(env, call, err);
}

/**
 * Sets a socket buffer size. The FORCE variant ignores net.core.[rw]mem_max but needs
 * CAP_NET_ADMIN; without it fall back to the capped plain option.
 */
static int set_buffer(int fd, int force_opt, int opt, int size) {
  if (setsockopt(fd, SOL_SOCKET, force_opt, &size, sizeof size) == 0) return 0;
  return setsockopt(fd, SOL_SOCKET, opt, &size, sizeof size);
}

/** udpOpen(ip, port, rcvbuf, sndbuf) -> fd */
static napi_value udp_open(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  if (!get_args(env, info, 4, argv)) return NULL;

  uint32_t ip;
  int64_t port, rcvbuf, sndbuf;
  if (!arg_u32(env, argv[0], "ip", &ip) || !arg_int(env, argv[1], "port", 0, 65535, &port) ||
      !arg_int(env, argv[2], "rcvbuf", 0, INT_MAX, &rcvbuf) ||
      !arg_int(env, argv[3], "sndbuf", 0, INT_MAX, &sndbuf)) {
    return NULL;
  }

  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    throw_errno(env, "socket", errno);
    return NULL;
  }
  int one = 1;
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0) {
    fail_and_close(env, fd, "setsockopt(SO_REUSEADDR)");
    return NULL;
  }
  if (rcvbuf > 0 && set_buffer(fd, SO_RCVBUFFORCE, SO_RCVBUF, (int)rcvbuf) < 0) {
    fail_and_close(env, fd, "setsockopt(SO_RCVBUF)");
    return NULL;
  }
  if (sndbuf > 0 && set_buffer(fd, SO_SNDBUFFORCE, SO_SNDBUF, (int)sndbuf) < 0) {
    fail_and_close(env, fd, "setsockopt(SO_SNDBUF)");
    return NULL;
  }

  struct sockaddr_in addr;
  memset(&addr, 0, sizeof addr);
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(ip);
  addr.sin_port = htons((uint16_t)port);
  if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
    fail_and_close(env, fd, "bind");
    return NULL;
  }
  return ret_int(env, fd);
}

/** udpLocalPort(fd) -> bound port */
static napi_value udp_local_port(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int fd;
  if (!get_args(env, info, 1, argv) || !arg_fd(env, argv[0], &fd)) return NULL;

  struct sockaddr_in addr;
  socklen_t len = sizeof addr;
  memset(&addr, 0, sizeof addr);
  if (getsockname(fd, (struct sockaddr *)&addr, &len) < 0) {
    throw_errno(env, "getsockname", errno);
    return NULL;
  }
  if (addr.sin_family != AF_INET) {
    throw_errno(env, "getsockname", EAFNOSUPPORT);
    return NULL;
  }
  return ret_u32(env, ntohs(addr.sin_port));
}

/**
 * recvBatch(fd, slab, base, stride, max, lens, srcIps, srcPorts, segSizes?) -> datagrams
 * received. With segSizes, the UDP_GRO segment size of each entry is reported (0 when the
 * kernel did not coalesce it).
 */
static napi_value recv_batch(napi_env env, napi_callback_info info) {
  napi_value argv[9];
  if (!get_args(env, info, 9, argv)) return NULL;

  int fd;
  uint8_t *slab;
  uint32_t *lens, *src_ips;
  uint16_t *src_ports, *seg_sizes;
  size_t slab_len, lens_len, ips_len, ports_len, segs_len;
  uint32_t base, stride, max;
  if (!arg_fd(env, argv[0], &fd) ||
      !arg_typed(env, argv[1], "slab", napi_uint8_array, (void **)&slab, &slab_len) ||
      !arg_u32(env, argv[2], "base", &base) || !arg_u32(env, argv[3], "stride", &stride) ||
      !arg_u32(env, argv[4], "max", &max) ||
      !arg_typed(env, argv[5], "lens", napi_uint32_array, (void **)&lens, &lens_len) ||
      !arg_typed(env, argv[6], "srcIps", napi_uint32_array, (void **)&src_ips, &ips_len) ||
      !arg_typed(env, argv[7], "srcPorts", napi_uint16_array, (void **)&src_ports, &ports_len) ||
      !opt_typed(env, argv[8], "segSizes", napi_uint16_array, (void **)&seg_sizes, &segs_len)) {
    return NULL;
  }
  size_t n = clamp_batch(max);
  if (!check_entries(env, "lens", lens_len, n) || !check_entries(env, "srcIps", ips_len, n) ||
      !check_entries(env, "srcPorts", ports_len, n) ||
      (seg_sizes != NULL && !check_entries(env, "segSizes", segs_len, n)) ||
      !check_slots(env, slab_len, base, stride, n)) {
    return NULL;
  }
  if (n == 0) return ret_u32(env, 0);

  struct mmsghdr msgs[BATCH_MAX];
  struct iovec iovs[BATCH_MAX];
  struct sockaddr_in addrs[BATCH_MAX];
  // Room for one int control message per datagram (the UDP_GRO segment size).
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } ctrl[BATCH_MAX];
  memset(msgs, 0, n * sizeof msgs[0]);
  for (size_t i = 0; i < n; i++) {
    iovs[i].iov_base = slab + base + (size_t)stride * i;
    iovs[i].iov_len = stride;
    msgs[i].msg_hdr.msg_iov = &iovs[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
    msgs[i].msg_hdr.msg_name = &addrs[i];
    msgs[i].msg_hdr.msg_namelen = sizeof addrs[i];
    if (seg_sizes != NULL) {
      msgs[i].msg_hdr.msg_control = ctrl[i].buf;
      msgs[i].msg_hdr.msg_controllen = sizeof ctrl[i].buf;
    }
  }

  int got;
  do {
    got = recvmmsg(fd, msgs, (unsigned int)n, MSG_DONTWAIT, NULL);
  } while (got < 0 && errno == EINTR);
  if (got < 0) {
    if (is_again(errno)) return ret_u32(env, 0);
    throw_errno(env, "recvmmsg", errno);
    return NULL;
  }

  for (int i = 0; i < got; i++) {
    const struct msghdr *h = &msgs[i].msg_hdr;
    // The kernel flags a datagram that did not fit in its iovec; msg_len is then the cut size.
    lens[i] = (h->msg_flags & MSG_TRUNC) ? LEN_TRUNCATED : msgs[i].msg_len;
    if (h->msg_namelen >= sizeof(struct sockaddr_in) && addrs[i].sin_family == AF_INET) {
      src_ips[i] = ntohl(addrs[i].sin_addr.s_addr);
      src_ports[i] = ntohs(addrs[i].sin_port);
    } else {
      src_ips[i] = 0;
      src_ports[i] = 0;
    }
    if (seg_sizes != NULL) {
      seg_sizes[i] = 0;
      for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c != NULL; c = CMSG_NXTHDR((struct msghdr *)h, c)) {
        if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
          int size;
          memcpy(&size, CMSG_DATA(c), sizeof size);
          seg_sizes[i] = (uint16_t)size;
        }
      }
    }
  }
  return ret_u32(env, (uint32_t)got);
}


/**
 * sendBatch(fd, slab, offs, lens, dstIps, dstPorts, count, errors, segSizes?) -> entries
 * consumed. With segSizes, an entry longer than segSizes[i] (> 0) is sent with UDP_SEGMENT:
 * the kernel cuts it into datagrams of that size (the last may be shorter).
 */
static napi_value send_batch(napi_env env, napi_callback_info info) {
  napi_value argv[9];
  if (!get_args(env, info, 9, argv)) return NULL;

  int fd;
  uint8_t *slab;
  uint32_t *offs, *lens, *dst_ips, *errors;
  uint16_t *dst_ports, *seg_sizes;
  size_t slab_len, offs_len, lens_len, ips_len, ports_len, errors_len, segs_len;
  uint32_t count;
  if (!arg_fd(env, argv[0], &fd) ||
      !arg_typed(env, argv[1], "slab", napi_uint8_array, (void **)&slab, &slab_len) ||
      !arg_typed(env, argv[2], "offs", napi_uint32_array, (void **)&offs, &offs_len) ||
      !arg_typed(env, argv[3], "lens", napi_uint32_array, (void **)&lens, &lens_len) ||
      !arg_typed(env, argv[4], "dstIps", napi_uint32_array, (void **)&dst_ips, &ips_len) ||
      !arg_typed(env, argv[5], "dstPorts", napi_uint16_array, (void **)&dst_ports, &ports_len) ||
      !arg_u32(env, argv[6], "count", &count) ||
      !arg_typed(env, argv[7], "errors", napi_uint32_array, (void **)&errors, &errors_len) ||
      !opt_typed(env, argv[8], "segSizes", napi_uint16_array, (void **)&seg_sizes, &segs_len)) {
    return NULL;
  }
  size_t n = clamp_batch(count);
  if (!check_entries(env, "offs", offs_len, n) || !check_entries(env, "lens", lens_len, n) ||
      !check_entries(env, "dstIps", ips_len, n) || !check_entries(env, "dstPorts", ports_len, n) ||
      !check_entries(env, "errors", errors_len, 1) ||
      (seg_sizes != NULL && !check_entries(env, "segSizes", segs_len, n)) ||
      !check_spans(env, slab_len, offs, lens, n)) {
    return NULL;
  }
  if (n == 0) return ret_u32(env, 0);

  struct mmsghdr msgs[BATCH_MAX];
  struct iovec iovs[BATCH_MAX];
  struct sockaddr_in addrs[BATCH_MAX];
  union {
    char buf[CMSG_SPACE(sizeof(uint16_t))];
    struct cmsghdr align;
  } ctrl[BATCH_MAX];
  memset(msgs, 0, n * sizeof msgs[0]);
  memset(addrs, 0, n * sizeof addrs[0]);
  for (size_t i = 0; i < n; i++) {
    iovs[i].iov_base = slab + offs[i];
    iovs[i].iov_len = lens[i];
    addrs[i].sin_family = AF_INET;
    addrs[i].sin_addr.s_addr = htonl(dst_ips[i]);
    addrs[i].sin_port = htons(dst_ports[i]);
    msgs[i].msg_hdr.msg_iov = &iovs[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
    msgs[i].msg_hdr.msg_name = &addrs[i];
    msgs[i].msg_hdr.msg_namelen = sizeof addrs[i];
    if (seg_sizes != NULL && seg_sizes[i] > 0 && lens[i] > seg_sizes[i]) {
      memset(ctrl[i].buf, 0, sizeof ctrl[i].buf);
      msgs[i].msg_hdr.msg_control = ctrl[i].buf;
      msgs[i].msg_hdr.msg_controllen = sizeof ctrl[i].buf;
      struct cmsghdr *c = CMSG_FIRSTHDR(&msgs[i].msg_hdr);
      c->cmsg_level = SOL_UDP;
      c->cmsg_type = UDP_SEGMENT;
      c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
      uint16_t size = seg_sizes[i];
      memcpy(CMSG_DATA(c), &size, sizeof size);
    }
  }

  // sendmmsg stops at the first failing datagram and reports its error only when it is the
  // first of the call, so a short count means "call again": the next call starts with the
  // failing datagram and then fails on it, which is where we decide to skip or stop.
  size_t done = 0;
  uint32_t skipped = 0;
  while (done < n) {
    int sent = sendmmsg(fd, msgs + done, (unsigned int)(n - done), MSG_DONTWAIT);
    if (sent > 0) {
      done += (size_t)sent;
      continue;
    }
    if (sent == 0) break;  // not expected for n > 0; do not spin
    int err = errno;
    if (err == EINTR) continue;
    // Full queue (ENOBUFS is the same back-pressure seen on some paths): leave the rest.
    if (is_again(err) || err == ENOBUFS) break;
    if (is_fd_error(err)) {
      errors[0] += skipped;
      throw_errno(env, "sendmmsg", err);
      return NULL;
    }
    skipped++;
    done++;
  }
  errors[0] += skipped;
  return ret_u32(env, (uint32_t)done);
}


/** udpSetGro(fd, enable) — UDP_GRO: the kernel may hand runs of datagrams as one buffer. */
static napi_value udp_set_gro(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!get_args(env, info, 2, argv)) return NULL;
  int fd;
  bool enable;
  if (!arg_fd(env, argv[0], &fd)) return NULL;
  NAPI_CHECK(env, napi_get_value_bool(env, argv[1], &enable));
  int v = enable ? 1 : 0;
  if (setsockopt(fd, SOL_UDP, UDP_GRO, &v, sizeof v) < 0) {
    throw_errno(env, "setsockopt(UDP_GRO)", errno);
    return NULL;
  }
  return ret_undefined(env);
}

/** tapSetOffload(fd, flags) — TUNSETOFFLOAD with TUN_F_* flags. */
static napi_value tap_set_offload(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!get_args(env, info, 2, argv)) return NULL;
  int fd;
  uint32_t flags;
  if (!arg_fd(env, argv[0], &fd) || !arg_u32(env, argv[1], "flags", &flags)) return NULL;
  if (ioctl(fd, TUNSETOFFLOAD, (unsigned long)flags) < 0) {
    throw_errno(env, "ioctl(TUNSETOFFLOAD)", errno);
    return NULL;
  }
  return ret_undefined(env);
}

/** The RFC 1071 sum of p[0 .. len) as big-endian words plus `initial`, folded to 16 bits. */
static uint32_t ones_sum(const uint8_t *p, size_t len, uint32_t initial) {
  uint64_t sum = 0;
  size_t i = 0;
  // Sum native-endian 32-bit halves into 64 bits: no carry is lost for spans under 16 GiB.
  for (; i + 8 <= len; i += 8) {
    uint64_t w;
    memcpy(&w, p + i, 8);
    sum += (w & 0xffffffffu) + (w >> 32);
  }
  for (; i + 2 <= len; i += 2) {
    uint16_t w;
    memcpy(&w, p + i, 2);
    sum += w;
  }
  if (i < len) {
    uint16_t w = 0;
    memcpy(&w, p + i, 1);  // the odd byte is the high byte of a big-endian word
    sum += w;
  }
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  uint16_t folded = (uint16_t)sum;
  uint32_t total = (uint32_t)ntohs(folded) + (initial & 0xffff) + (initial >> 16);  // native → big-endian value
  while (total >> 16) total = (total & 0xffff) + (total >> 16);
  return total;
}

/**
 * checksum(slab, off, len, initial) -> the 16-bit ones' complement sum (folded, not inverted)
 * of slab[off .. off+len) read as big-endian 16-bit words, added to `initial`. A loop over
 * 64-bit loads; the byte order is fixed up once at the end (RFC 1071 §2(B)).
 */
static napi_value checksum(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  if (!get_args(env, info, 4, argv)) return NULL;
  uint8_t *slab;
  size_t slab_len;
  uint32_t off, len, initial;
  if (!arg_typed(env, argv[0], "slab", napi_uint8_array, (void **)&slab, &slab_len) ||
      !arg_u32(env, argv[1], "off", &off) || !arg_u32(env, argv[2], "len", &len) ||
      !arg_u32(env, argv[3], "initial", &initial)) {
    return NULL;
  }
  if ((uint64_t)off + len > slab_len) {
    throw_arg(env, ARG_RANGE, "checksum span %u+%u overruns the %zu-byte slab", off, len, slab_len);
    return NULL;
  }
  return ret_u32(env, ones_sum(slab + off, len, initial));
}

/**
 * checksumMany(slab, offs, lens, sums, count): for each i < count, sums[i] becomes the sum of
 * slab[offs[i] .. offs[i]+lens[i]) added to the initial value sums[i] held, as checksum()
 * computes it. One call for all the segments of a super-frame or a GRO run: the per-call cost
 * of N-API is larger than the sum of a 1.4 KB segment.
 */
static napi_value checksum_many(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  if (!get_args(env, info, 5, argv)) return NULL;
  uint8_t *slab;
  uint32_t *offs, *lens, *sums;
  size_t slab_len, offs_len, lens_len, sums_len;
  int64_t count;
  if (!arg_typed(env, argv[0], "slab", napi_uint8_array, (void **)&slab, &slab_len) ||
      !arg_typed(env, argv[1], "offs", napi_uint32_array, (void **)&offs, &offs_len) ||
      !arg_typed(env, argv[2], "lens", napi_uint32_array, (void **)&lens, &lens_len) ||
      !arg_typed(env, argv[3], "sums", napi_uint32_array, (void **)&sums, &sums_len) ||
      !arg_int(env, argv[4], "count", 0, INT32_MAX, &count)) {
    return NULL;
  }
  size_t n = (size_t)count;
  if (!check_entries(env, "offs", offs_len, n) || !check_entries(env, "lens", lens_len, n) ||
      !check_entries(env, "sums", sums_len, n) || !check_spans(env, slab_len, offs, lens, n)) {
    return NULL;
  }
  for (size_t i = 0; i < n; i++) sums[i] = ones_sum(slab + offs[i], lens[i], sums[i]);
  return ret_undefined(env);
}

/* ------------------------------------------------------------------------------------------ */
/* poll, eventfd, close                                                                       */
/* ------------------------------------------------------------------------------------------ */

/**
 * pollIn(fds, revents, timeoutMs[, spinUs]) -> ready fds (0 on timeout or EINTR), negated when
 * they were found while busy-polling: with spinUs > 0 it first polls without sleeping, yielding
 * the CPU between polls, for up to spinUs µs, and only then sleeps in poll().
 */
static napi_value poll_in(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  if (!get_args(env, info, 4, argv)) return NULL;

  int32_t *fds, *revents;
  size_t fds_len, revents_len;
  int64_t timeout, spin_us = 0;
  napi_valuetype spin_type;
  if (!arg_typed(env, argv[0], "fds", napi_int32_array, (void **)&fds, &fds_len) ||
      !arg_typed(env, argv[1], "revents", napi_int32_array, (void **)&revents, &revents_len) ||
      !arg_int(env, argv[2], "timeoutMs", -1, INT_MAX, &timeout) ||
      napi_typeof(env, argv[3], &spin_type) != napi_ok ||
      (spin_type != napi_undefined && !arg_int(env, argv[3], "spinUs", 0, 1000000, &spin_us))) {
    return NULL;
  }
  if (fds_len > POLL_MAX_FDS) {
    throw_arg(env, ARG_RANGE, "fds has %zu entries, at most %d are supported", fds_len,
              POLL_MAX_FDS);
    return NULL;
  }
  if (!check_entries(env, "revents", revents_len, fds_len)) return NULL;

  struct pollfd pfds[POLL_MAX_FDS];
  for (size_t i = 0; i < fds_len; i++) {
    pfds[i].fd = fds[i];
    pfds[i].events = POLLIN;
    pfds[i].revents = 0;
  }
  int ready = 0;
  if (spin_us > 0) {
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
      ready = poll(pfds, fds_len, 0);
      if (ready != 0) break;
      clock_gettime(CLOCK_MONOTONIC, &now);
      int64_t spent_us = (int64_t)(now.tv_sec - t0.tv_sec) * 1000000 + (now.tv_nsec - t0.tv_nsec) / 1000;
      if (spent_us >= spin_us) break;
      // Any runnable thread on this CPU (such as the pod a frame was just written for) goes
      // first: spinning without yielding starves it on a small machine and costs more than it saves.
      sched_yield();
    }
    if (ready > 0) {
      for (size_t i = 0; i < fds_len; i++) revents[i] = pfds[i].revents;
      return ret_int(env, -ready);
    }
  }
  if (ready == 0) ready = poll(pfds, fds_len, (int)timeout);
  if (ready < 0) {
    if (errno != EINTR) {
      throw_errno(env, "poll", errno);
      return NULL;
    }
    ready = 0;
    for (size_t i = 0; i < fds_len; i++) pfds[i].revents = 0;
  }
  for (size_t i = 0; i < fds_len; i++) revents[i] = pfds[i].revents;
  return ret_int(env, ready);
}

/** eventfdOpen() -> fd */
static napi_value eventfd_open(napi_env env, napi_callback_info info) {
  (void)info;
  int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) {
    throw_errno(env, "eventfd", errno);
    return NULL;
  }
  return ret_int(env, fd);
}

/** eventfdSignal(fd): add 1 to the counter. */
static napi_value eventfd_signal(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int fd;
  if (!get_args(env, info, 1, argv) || !arg_fd(env, argv[0], &fd)) return NULL;

  uint64_t one = 1;
  ssize_t r;
  do {
    r = write(fd, &one, sizeof one);
  } while (r < 0 && errno == EINTR);
  // EAGAIN means the counter is saturated: the reader is already due to wake up.
  if (r < 0 && !is_again(errno)) {
    throw_errno(env, "write(eventfd)", errno);
    return NULL;
  }
  return ret_undefined(env);
}

/** eventfdDrain(fd) -> counter value, 0 when not signalled */
static napi_value eventfd_drain(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int fd;
  if (!get_args(env, info, 1, argv) || !arg_fd(env, argv[0], &fd)) return NULL;

  uint64_t value = 0;
  ssize_t r;
  do {
    r = read(fd, &value, sizeof value);
  } while (r < 0 && errno == EINTR);
  if (r < 0) {
    if (is_again(errno)) value = 0;
    else {
      throw_errno(env, "read(eventfd)", errno);
      return NULL;
    }
  }
  napi_value out;
  NAPI_CHECK(env, napi_create_double(env, (double)value, &out));
  return out;
}

/** close(fd) */
static napi_value close_fd(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int fd;
  if (!get_args(env, info, 1, argv) || !arg_fd(env, argv[0], &fd)) return NULL;

  // On Linux the fd is released even when close reports EINTR; retrying could close a
  // descriptor another thread has just been given.
  if (close(fd) < 0 && errno != EINTR) {
    throw_errno(env, "close", errno);
    return NULL;
  }
  return ret_undefined(env);
}

/* ------------------------------------------------------------------------------------------ */
/* Network namespaces                                                                         */
/* ------------------------------------------------------------------------------------------ */

/**
 * inNetns(path, fn) -> fn()
 *
 * Runs `fn` synchronously with the calling thread switched (setns) into the network namespace
 * at `path`, and switches back before returning, also when `fn` throws. A socket created inside
 * `fn` (an rtnetlink socket, say) belongs to that namespace for its whole life; nothing else
 * runs on this thread meanwhile, and other threads are not affected (setns(CLONE_NEWNET) acts
 * on the calling thread only). If switching back fails the process is in an unknown state and
 * aborts rather than carry on in the wrong namespace.
 */
static napi_value in_netns(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!get_args(env, info, 2, argv)) return NULL;

  char path[PATH_MAX];
  if (!arg_string(env, argv[0], "path", path, sizeof path)) return NULL;
  napi_valuetype type;
  NAPI_CHECK(env, napi_typeof(env, argv[1], &type));
  if (type != napi_function) {
    throw_arg(env, ARG_TYPE, "fn must be a function");
    return NULL;
  }

  int target = open(path, O_RDONLY | O_CLOEXEC);
  if (target < 0) {
    throw_errno(env, "open(netns)", errno);
    return NULL;
  }
  int self = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  if (self < 0) {
    fail_and_close(env, target, "open(/proc/thread-self/ns/net)");
    return NULL;
  }
  // EINVAL: the file is not a network namespace.
  if (setns(target, CLONE_NEWNET) < 0) {
    int err = errno;
    close(target);
    close(self);
    throw_errno(env, "setns", err);
    return NULL;
  }
  close(target);

  napi_value global, result = NULL;
  napi_status status = napi_get_global(env, &global);
  if (status == napi_ok) status = napi_call_function(env, global, argv[1], 0, NULL, &result);

  if (setns(self, CLONE_NEWNET) < 0) {
    napi_fatal_error("vxmesh_native.inNetns", NAPI_AUTO_LENGTH,
                     "setns back to the original network namespace failed", NAPI_AUTO_LENGTH);
  }
  close(self);
  if (status != napi_ok) {
    throw_napi(env, status);  // no-op when fn threw: its exception is already pending
    return NULL;
  }
  return result;
}

/* ------------------------------------------------------------------------------------------ */
/* Capabilities                                                                               */
/* ------------------------------------------------------------------------------------------ */

// Linux keeps capability sets, the bounding set and no_new_privs per thread, and capset(2) and
// prctl(2) change only the calling thread. Node runs a dozen threads (V8 platform workers, the
// libuv pool, our worker threads), so a drop must run on each of them: like glibc's setuid()
// and libpsx, every thread is sent a signal whose handler makes the same calls on its own
// thread and acknowledges.
//
// The signal is SIGRTMIN-1: glibc's SIGSETXID (33), musl's SIGSYNCCALL (34), the signal each C
// library reserves for exactly this job. Node's SIGUSR1 watchdog thread blocks every signal a
// program may block (SigBlk fffffffe7ffbfeff), and the C library refuses to let any thread block
// its reserved ones, so only that signal reaches every thread. It is borrowed for the broadcast
// only: the handler is installed with the raw rt_sigaction syscall (the C library's sigaction
// refuses reserved signals) and the library's own handler is put back afterwards. Our signals
// carry si_code SI_QUEUE and a token, so a stray one would be ignored by either handler (glibc's
// acts only on SI_TKILL). If some thread does not answer before the deadline, our handler stays
// installed (its late signal must not reach glibc's handler) and the caller is told which.

#define CAP_MAX_THREADS 4096
#define CAP_MAX_ROUNDS 16

struct raw_sigaction {
  void *handler;
  unsigned long flags;
  void *restorer;
  uint64_t mask;
};

enum cap_step { CAP_STEP_OK = 0, CAP_STEP_BOUNDING, CAP_STEP_AMBIENT, CAP_STEP_CAPSET, CAP_STEP_NNP };

struct cap_plan {
  uint64_t keep;       // the effective and permitted sets
  uint64_t ambient;    // the inheritable and ambient sets (a subset of keep; usually empty)
  bool drop_bounding;  // needs CAP_SETPCAP, so it comes first
  int last_cap;
  int token;
};

struct cap_ack {
  _Atomic int tid;  // 0 until the slot is filled
  int step;
  int err;
};

static pthread_mutex_t cap_lock = PTHREAD_MUTEX_INITIALIZER;
static struct cap_plan cap_plan;
static struct cap_ack cap_acks[CAP_MAX_THREADS];
static atomic_int cap_ack_count;

static const char *cap_step_name(int step) {
  switch (step) {
    case CAP_STEP_BOUNDING: return "bounding";
    case CAP_STEP_AMBIENT: return "ambient";
    case CAP_STEP_CAPSET: return "capset";
    case CAP_STEP_NNP: return "no_new_privs";
    default: return "none";
  }
}

/** Async-signal-safe: raw syscalls only. Returns 0 or an errno, with the failing step. */
static int cap_drop_this_thread(const struct cap_plan *p, int *step) {
  if (p->drop_bounding) {
    for (int cap = 0; cap <= p->last_cap; cap++) {
      if (p->keep & (1ULL << cap)) continue;
      long in = syscall(SYS_prctl, PR_CAPBSET_READ, cap, 0, 0, 0);
      if (in == 1 && syscall(SYS_prctl, PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) {
        *step = CAP_STEP_BOUNDING;
        return errno;
      }
    }
  }
  // EINVAL: a kernel before 4.3 has no ambient set.
  if (syscall(SYS_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL) {
    *step = CAP_STEP_AMBIENT;
    return errno;
  }
  struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct data[2];
  memset(data, 0, sizeof data);
  data[0].effective = data[0].permitted = (uint32_t)p->keep;
  data[1].effective = data[1].permitted = (uint32_t)(p->keep >> 32);
  data[0].inheritable = (uint32_t)p->ambient;
  data[1].inheritable = (uint32_t)(p->ambient >> 32);
  if (syscall(SYS_capset, &hdr, data) < 0) {
    *step = CAP_STEP_CAPSET;
    return errno;
  }
  // Ambient capabilities pass through execve to a program without file capabilities when the
  // process is not root: how a helper it runs (iptables-restore) gets them. Each must be both
  // permitted and inheritable, as set just above.
  for (int cap = 0; cap <= p->last_cap; cap++) {
    if ((p->ambient & (1ULL << cap)) == 0) continue;
    if (syscall(SYS_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) < 0) {
      *step = CAP_STEP_AMBIENT;
      return errno;
    }
  }
  if (syscall(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
    *step = CAP_STEP_NNP;
    return errno;
  }
  *step = CAP_STEP_OK;
  return 0;
}

static void cap_signal_handler(int sig, siginfo_t *si, void *uctx) {
  (void)sig;
  (void)uctx;
  if (si->si_code != SI_QUEUE || si->si_pid != getpid() || si->si_value.sival_int != cap_plan.token) return;
  int saved_errno = errno;
  int step = CAP_STEP_OK;
  int err = cap_drop_this_thread(&cap_plan, &step);
  int slot = atomic_fetch_add(&cap_ack_count, 1);
  if (slot < CAP_MAX_THREADS) {
    cap_acks[slot].step = step;
    cap_acks[slot].err = err;
    atomic_store_explicit(&cap_acks[slot].tid, (int)syscall(SYS_gettid), memory_order_release);
  }
  errno = saved_errno;
}

/**
 * The kernel-level action that runs cap_signal_handler, with the C library's own signal
 * trampoline (sa_restorer): installed with the library's sigaction on a spare signal and read
 * back raw, so nothing here depends on how the library builds its frames.
 */
static int cap_make_action(struct raw_sigaction *out) {
  int spare = SIGRTMAX;
  struct sigaction ours, saved;
  memset(&ours, 0, sizeof ours);
  ours.sa_sigaction = cap_signal_handler;
  ours.sa_flags = SA_SIGINFO | SA_RESTART;
  sigfillset(&ours.sa_mask);
  if (sigaction(spare, &ours, &saved) < 0) return errno;
  int err = 0;
  if (syscall(SYS_rt_sigaction, spare, NULL, out, sizeof out->mask) < 0) err = errno;
  sigaction(spare, &saved, NULL);
  return err;
}

/** Thread ids listed in /proc/self/task; -1 and errno on failure. */
static int cap_list_threads(int *tids, int max) {
  DIR *dir = opendir("/proc/self/task");
  if (dir == NULL) return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(dir)) != NULL && n < max) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    tids[n++] = atoi(e->d_name);
  }
  closedir(dir);
  return n;
}

static bool cap_tid_in(const int *tids, int n, int tid) {
  for (int i = 0; i < n; i++) {
    if (tids[i] == tid) return true;
  }
  return false;
}

static int64_t cap_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t cap_get_permitted(int *err) {
  struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct data[2];
  memset(data, 0, sizeof data);
  if (syscall(SYS_capget, &hdr, data) < 0) {
    *err = errno;
    return 0;
  }
  *err = 0;
  return (uint64_t)data[0].permitted | ((uint64_t)data[1].permitted << 32);
}

static uint64_t cap_get_effective(void) {
  struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct data[2];
  memset(data, 0, sizeof data);
  if (syscall(SYS_capget, &hdr, data) < 0) return 0;
  return (uint64_t)data[0].effective | ((uint64_t)data[1].effective << 32);
}

static int cap_last_cap(void) {
  int last = 0;
  while (last < 63 && syscall(SYS_prctl, PR_CAPBSET_READ, last + 1, 0, 0, 0) >= 0) last++;
  return last;
}

static uint64_t cap_bounding(int last) {
  uint64_t set = 0;
  for (int cap = 0; cap <= last; cap++) {
    if (syscall(SYS_prctl, PR_CAPBSET_READ, cap, 0, 0, 0) == 1) set |= 1ULL << cap;
  }
  return set;
}

struct cap_outcome {
  const char *error_call;  // set when the broadcast itself could not run
  int error_errno;
  int self_step, self_err;
  int threads;                            // threads that acknowledged, this one included
  int failed_tids[CAP_MAX_THREADS];       // acknowledged with an error
  int failed_steps[CAP_MAX_THREADS];
  int failed_errs[CAP_MAX_THREADS];
  int failed;
  int silent_tids[CAP_MAX_THREADS];       // did not acknowledge before the deadline
  int silent;
};

/** Signals every thread not yet done (round after round, for threads started meanwhile). */
static void cap_broadcast(int sig, int64_t deadline, struct cap_outcome *out) {
  static int done[CAP_MAX_THREADS], listed[CAP_MAX_THREADS], pending[CAP_MAX_THREADS];
  int ndone = 0;
  int self = (int)syscall(SYS_gettid);
  done[ndone++] = self;
  pid_t pid = getpid();
  for (int round = 0; round < CAP_MAX_ROUNDS; round++) {
    int nlisted = cap_list_threads(listed, CAP_MAX_THREADS);
    if (nlisted < 0) {
      out->error_call = "opendir(/proc/self/task)";
      out->error_errno = errno;
      return;
    }
    int npending = 0;
    int first_slot = atomic_load(&cap_ack_count);
    for (int i = 0; i < nlisted; i++) {
      if (cap_tid_in(done, ndone, listed[i])) continue;
      siginfo_t si;
      memset(&si, 0, sizeof si);
      si.si_signo = sig;
      si.si_code = SI_QUEUE;
      si.si_pid = pid;
      si.si_uid = getuid();
      si.si_value.sival_int = cap_plan.token;
      if (syscall(SYS_rt_tgsigqueueinfo, pid, listed[i], sig, &si) < 0) {
        if (errno == ESRCH) continue;  // the thread has exited
        out->failed_tids[out->failed] = listed[i];
        out->failed_steps[out->failed] = CAP_STEP_OK;
        out->failed_errs[out->failed++] = errno;
        done[ndone++] = listed[i];
        continue;
      }
      pending[npending++] = listed[i];
    }
    if (npending == 0) return;
    // Wait for this round's acknowledgements (or threads exiting).
    for (;;) {
      int acked = 0;
      int count = atomic_load(&cap_ack_count);
      for (int s = first_slot; s < count && s < CAP_MAX_THREADS; s++) {
        if (atomic_load_explicit(&cap_acks[s].tid, memory_order_acquire) != 0) acked++;
      }
      if (acked >= npending) break;
      if (cap_now_ms() > deadline) {
        for (int i = 0; i < npending; i++) {
          bool answered = false;
          for (int s = first_slot; s < count && s < CAP_MAX_THREADS; s++) {
            if (atomic_load_explicit(&cap_acks[s].tid, memory_order_acquire) == pending[i]) answered = true;
          }
          char path[64];
          snprintf(path, sizeof path, "/proc/self/task/%d", pending[i]);
          if (!answered && access(path, F_OK) == 0) out->silent_tids[out->silent++] = pending[i];
        }
        break;
      }
      // A thread that exited before handling its signal never answers: stop waiting for it.
      int gone = 0;
      for (int i = 0; i < npending; i++) {
        char path[64];
        snprintf(path, sizeof path, "/proc/self/task/%d", pending[i]);
        if (access(path, F_OK) != 0) gone++;
      }
      if (acked + gone >= npending) break;
      struct timespec pause = {0, 200 * 1000};
      nanosleep(&pause, NULL);
    }
    int count = atomic_load(&cap_ack_count);
    for (int s = first_slot; s < count && s < CAP_MAX_THREADS; s++) {
      int tid = atomic_load_explicit(&cap_acks[s].tid, memory_order_acquire);
      if (tid == 0) continue;
      out->threads++;
      if (cap_acks[s].err != 0) {
        out->failed_tids[out->failed] = tid;
        out->failed_steps[out->failed] = cap_acks[s].step;
        out->failed_errs[out->failed++] = cap_acks[s].err;
      }
    }
    for (int i = 0; i < npending && ndone < CAP_MAX_THREADS; i++) done[ndone++] = pending[i];
    if (out->silent > 0) return;
  }
}

static bool set_bigint(napi_env env, napi_value obj, const char *key, uint64_t v) {
  napi_value x;
  NAPI_CHECK_BOOL(env, napi_create_bigint_uint64(env, v, &x));
  NAPI_CHECK_BOOL(env, napi_set_named_property(env, obj, key, x));
  return true;
}

static bool set_int(napi_env env, napi_value obj, const char *key, int64_t v) {
  napi_value x;
  NAPI_CHECK_BOOL(env, napi_create_int64(env, v, &x));
  NAPI_CHECK_BOOL(env, napi_set_named_property(env, obj, key, x));
  return true;
}

static bool set_str(napi_env env, napi_value obj, const char *key, const char *v) {
  napi_value x;
  NAPI_CHECK_BOOL(env, napi_create_string_utf8(env, v, NAPI_AUTO_LENGTH, &x));
  NAPI_CHECK_BOOL(env, napi_set_named_property(env, obj, key, x));
  return true;
}

static bool set_bool(napi_env env, napi_value obj, const char *key, bool v) {
  napi_value x;
  NAPI_CHECK_BOOL(env, napi_get_boolean(env, v, &x));
  NAPI_CHECK_BOOL(env, napi_set_named_property(env, obj, key, x));
  return true;
}

/**
 * dropCapabilities(keep: bigint, deadlineMs, ambient?: bigint) -> report
 *
 * On every thread of the process: bounding set reduced to `keep` (when CAP_SETPCAP allows),
 * effective and permitted set to `keep` ∩ permitted, inheritable and ambient set to
 * `ambient` ∩ that (empty by default), no_new_privs set. Never throws for a failed drop: the report says what happened
 * ({ok, error?, kept, bounding, boundingReduced, threads, failed: [{tid, step, code}], silent: [tid]}).
 */
static napi_value drop_capabilities(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (!get_args(env, info, 3, argv)) return NULL;
  uint64_t keep;
  bool lossless;
  if (napi_get_value_bigint_uint64(env, argv[0], &keep, &lossless) != napi_ok || !lossless) {
    throw_arg(env, ARG_TYPE, "keep must be a bigint from 0 to 2^64-1");
    return NULL;
  }
  int64_t deadline_ms;
  if (!arg_int(env, argv[1], "deadlineMs", 1, 600000, &deadline_ms)) return NULL;
  uint64_t ambient = 0;
  napi_valuetype ambient_type;
  NAPI_CHECK(env, napi_typeof(env, argv[2], &ambient_type));
  if (ambient_type != napi_undefined &&
      (napi_get_value_bigint_uint64(env, argv[2], &ambient, &lossless) != napi_ok || !lossless)) {
    throw_arg(env, ARG_TYPE, "ambient must be a bigint from 0 to 2^64-1");
    return NULL;
  }

  napi_value report, failed_arr, silent_arr;
  NAPI_CHECK(env, napi_create_object(env, &report));
  if (pthread_mutex_trylock(&cap_lock) != 0) {
    if (!set_bool(env, report, "ok", false) || !set_str(env, report, "error", "another capability drop is in progress")) return NULL;
    return report;
  }
  static struct cap_outcome out;
  memset(&out, 0, sizeof out);
  int perr;
  uint64_t permitted = cap_get_permitted(&perr);
  int last = cap_last_cap();
  uint64_t before_bounding = cap_bounding(last);
  cap_plan.keep = keep & permitted;
  cap_plan.ambient = ambient & cap_plan.keep;
  cap_plan.last_cap = last;
  // CAP_SETPCAP (8) is needed to shrink the bounding set; without it, the set stays as it was
  // given (a launcher's job: systemd CapabilityBoundingSet=, Kubernetes drop: [ALL]).
  cap_plan.drop_bounding = (before_bounding & ~keep) != 0 && (cap_get_effective() & (1ULL << 8)) != 0;
  cap_plan.token = (int)((uint32_t)getpid() * 2654435761u ^ (uint32_t)cap_now_ms()) | 1;
  atomic_store(&cap_ack_count, 0);
  for (int i = 0; i < CAP_MAX_THREADS; i++) atomic_store(&cap_acks[i].tid, 0);

  int sig = SIGRTMIN - 1;
  struct raw_sigaction ours, theirs;
  bool installed = false;
  if (perr != 0) {
    out.error_call = "capget";
    out.error_errno = perr;
  } else {
    int err = cap_make_action(&ours);
    if (err != 0) {
      out.error_call = "sigaction";
      out.error_errno = err;
    } else if (syscall(SYS_rt_sigaction, sig, &ours, &theirs, sizeof ours.mask) < 0) {
      out.error_call = "rt_sigaction";
      out.error_errno = errno;
    } else {
      installed = true;
    }
  }
  if (installed) {
    out.self_err = cap_drop_this_thread(&cap_plan, &out.self_step);
    if (out.self_err == 0) {
      out.threads = 1;
      cap_broadcast(sig, cap_now_ms() + deadline_ms, &out);
    }
    if (out.silent == 0) syscall(SYS_rt_sigaction, sig, &theirs, NULL, sizeof theirs.mask);
  }
  uint64_t kept_eff = cap_get_effective();
  uint64_t bounding = cap_bounding(last);
  pthread_mutex_unlock(&cap_lock);

  bool ok = out.error_call == NULL && out.self_err == 0 && out.failed == 0 && out.silent == 0;
  if (!set_bool(env, report, "ok", ok)) return NULL;
  if (out.error_call != NULL) {
    char text[128], message[256];
    snprintf(message, sizeof message, "%s: %s", out.error_call, strerror_r(out.error_errno, text, sizeof text));
    if (!set_str(env, report, "error", message)) return NULL;
  } else if (out.self_err != 0) {
    char text[128], message[256];
    snprintf(message, sizeof message, "%s on the calling thread: %s", cap_step_name(out.self_step),
             strerror_r(out.self_err, text, sizeof text));
    if (!set_str(env, report, "error", message)) return NULL;
  }
  if (!set_bigint(env, report, "kept", kept_eff) || !set_bigint(env, report, "bounding", bounding) ||
      !set_bool(env, report, "boundingReduced", (bounding & ~keep) == 0) ||
      !set_int(env, report, "threads", out.threads) || !set_int(env, report, "signal", sig)) {
    return NULL;
  }
  NAPI_CHECK(env, napi_create_array_with_length(env, (size_t)out.failed, &failed_arr));
  for (int i = 0; i < out.failed; i++) {
    napi_value entry;
    NAPI_CHECK(env, napi_create_object(env, &entry));
    if (!set_int(env, entry, "tid", out.failed_tids[i]) ||
        !set_str(env, entry, "step", out.failed_steps[i] == CAP_STEP_OK ? "signal" : cap_step_name(out.failed_steps[i])) ||
        !set_str(env, entry, "code", errno_name(out.failed_errs[i]))) {
      return NULL;
    }
    NAPI_CHECK(env, napi_set_element(env, failed_arr, (uint32_t)i, entry));
  }
  NAPI_CHECK(env, napi_set_named_property(env, report, "failed", failed_arr));
  NAPI_CHECK(env, napi_create_array_with_length(env, (size_t)out.silent, &silent_arr));
  for (int i = 0; i < out.silent; i++) {
    napi_value tid;
    NAPI_CHECK(env, napi_create_int32(env, out.silent_tids[i], &tid));
    NAPI_CHECK(env, napi_set_element(env, silent_arr, (uint32_t)i, tid));
  }
  NAPI_CHECK(env, napi_set_named_property(env, report, "silent", silent_arr));
  return report;
}

/* ------------------------------------------------------------------------------------------ */
/* Registration                                                                               */
/* ------------------------------------------------------------------------------------------ */

#define EXPORT_FN(js_name, fn) \
  { js_name, NULL, fn, NULL, NULL, NULL, napi_enumerable, NULL }

NAPI_MODULE_INIT() {
  static const napi_property_descriptor functions[] = {
      EXPORT_FN("tapOpen", tap_open),
      EXPORT_FN("udpOpen", udp_open),
      EXPORT_FN("udpLocalPort", udp_local_port),
      EXPORT_FN("readFrames", read_frames),
      EXPORT_FN("writeFrames", write_frames),
      EXPORT_FN("recvBatch", recv_batch),
      EXPORT_FN("sendBatch", send_batch),
      EXPORT_FN("pollIn", poll_in),
      EXPORT_FN("eventfdOpen", eventfd_open),
      EXPORT_FN("eventfdSignal", eventfd_signal),
      EXPORT_FN("eventfdDrain", eventfd_drain),
      EXPORT_FN("close", close_fd),
      EXPORT_FN("udpSetGro", udp_set_gro),
      EXPORT_FN("tapSetOffload", tap_set_offload),
      EXPORT_FN("checksum", checksum),
      EXPORT_FN("checksumMany", checksum_many),
      EXPORT_FN("inNetns", in_netns),
      EXPORT_FN("dropCapabilities", drop_capabilities),
  };
  if (napi_define_properties(env, exports, sizeof functions / sizeof functions[0], functions) !=
      napi_ok) {
    throw_napi(env, napi_generic_failure);
    return NULL;
  }
  return exports;
}

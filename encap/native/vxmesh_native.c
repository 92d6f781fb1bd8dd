// vxmesh native shim: the few Linux syscalls Node does not expose (TAP devices, batched UDP
// I/O with recvmmsg/sendmmsg, poll on raw fds, eventfd, setns around socket creation). The contract is the NativeShim
// interface in encap/native.ts; every policy decision stays in TypeScript.
//
// Ground rules:
// - No allocation per packet: batched calls use stack arrays sized by BATCH_MAX and clamp
//   `max`/`count` to it.
// - No mutable global state, so the module can be loaded in several worker threads.
// - Bad arguments are caller bugs and throw TypeError/RangeError before any syscall.
//   EAGAIN never throws; other syscall failures throw an Error whose `code` is the errno name
//   ("EBADF") and whose message is "<call>: <strerror>".

#define _GNU_SOURCE

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>

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

  napi_valuetype type;
  NAPI_CHECK(env, napi_typeof(env, argv[0], &type));
  if (type != napi_string) {
    throw_arg(env, ARG_TYPE, "name must be a string");
    return NULL;
  }
  size_t name_len;
  NAPI_CHECK(env, napi_get_value_string_utf8(env, argv[0], NULL, 0, &name_len));
  if (name_len >= IFNAMSIZ) {
    throw_arg(env, ARG_RANGE, "name must be at most %d bytes", IFNAMSIZ - 1);
    return NULL;
  }

  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  NAPI_CHECK(env, napi_get_value_string_utf8(env, argv[0], ifr.ifr_name, IFNAMSIZ, &name_len));
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI;

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

/** writeFrames(fd, slab, offs, lens, count) -> frames written (stops at EAGAIN) */
static napi_value write_frames(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  if (!get_args(env, info, 5, argv)) return NULL;

  int fd;
  uint8_t *slab;
  uint32_t *offs, *lens;
  size_t slab_len, offs_len, lens_len;
  uint32_t count;
  if (!arg_fd(env, argv[0], &fd) ||
      !arg_typed(env, argv[1], "slab", napi_uint8_array, (void **)&slab, &slab_len) ||
      !arg_typed(env, argv[2], "offs", napi_uint32_array, (void **)&offs, &offs_len) ||
      !arg_typed(env, argv[3], "lens", napi_uint32_array, (void **)&lens, &lens_len) ||
      !arg_u32(env, argv[4], "count", &count)) {
    return NULL;
  }
  size_t n = clamp_batch(count);
  if (!check_entries(env, "offs", offs_len, n) || !check_entries(env, "lens", lens_len, n) ||
      !check_spans(env, slab_len, offs, lens, n)) {
    return NULL;
  }

  size_t done = 0;
  while (done < n) {
    ssize_t r = write(fd, slab + offs[done], lens[done]);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (is_again(errno)) break;
      throw_errno(env, "write", errno);
      return NULL;
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

/** Errors that concern the socket rather than one datagram: skipping would not help. */
static bool is_socket_error(int err) {
  return err == EBADF || err == ENOTSOCK || err == EFAULT;
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
    if (is_socket_error(err)) {
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

/** writeFramesWithHeaders(fd, slab, offs, lens, count, hdrs, hdrLen) -> frames written.
 * Like writeFrames, but each frame i is preceded by hdrs[i*hdrLen .. +hdrLen) in the same
 * writev: how virtio-net headers reach a TAP opened with IFF_VNET_HDR without moving frames. */
static napi_value write_frames_with_headers(napi_env env, napi_callback_info info) {
  napi_value argv[7];
  if (!get_args(env, info, 7, argv)) return NULL;

  int fd;
  uint8_t *slab, *hdrs;
  uint32_t *offs, *lens;
  size_t slab_len, offs_len, lens_len, hdrs_len;
  uint32_t count, hdr_len;
  if (!arg_fd(env, argv[0], &fd) ||
      !arg_typed(env, argv[1], "slab", napi_uint8_array, (void **)&slab, &slab_len) ||
      !arg_typed(env, argv[2], "offs", napi_uint32_array, (void **)&offs, &offs_len) ||
      !arg_typed(env, argv[3], "lens", napi_uint32_array, (void **)&lens, &lens_len) ||
      !arg_u32(env, argv[4], "count", &count) ||
      !arg_typed(env, argv[5], "hdrs", napi_uint8_array, (void **)&hdrs, &hdrs_len) ||
      !arg_u32(env, argv[6], "hdrLen", &hdr_len)) {
    return NULL;
  }
  size_t n = clamp_batch(count);
  if (!check_entries(env, "offs", offs_len, n) || !check_entries(env, "lens", lens_len, n) ||
      !check_spans(env, slab_len, offs, lens, n)) {
    return NULL;
  }
  if ((uint64_t)hdr_len * n > hdrs_len) {
    throw_arg(env, ARG_RANGE, "hdrs holds %zu bytes, %zu headers of %u need more", hdrs_len, n, hdr_len);
    return NULL;
  }

  size_t done = 0;
  while (done < n) {
    struct iovec iov[2] = {
        {.iov_base = hdrs + (size_t)hdr_len * done, .iov_len = hdr_len},
        {.iov_base = slab + offs[done], .iov_len = lens[done]},
    };
    ssize_t r = writev(fd, iov, 2);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (is_again(errno)) break;
      throw_errno(env, "writev", errno);
      return NULL;
    }
    done++;
  }
  return ret_u32(env, (uint32_t)done);
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
  const uint8_t *p = slab + off;
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
  uint32_t be = ntohs(folded);  // native-endian sum → big-endian value
  uint32_t total = be + (initial & 0xffff) + (initial >> 16);
  while (total >> 16) total = (total & 0xffff) + (total >> 16);
  return ret_u32(env, total);
}

/* ------------------------------------------------------------------------------------------ */
/* poll, eventfd, close                                                                       */
/* ------------------------------------------------------------------------------------------ */

/** pollIn(fds, revents, timeoutMs) -> ready fds (0 on timeout or EINTR) */
static napi_value poll_in(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (!get_args(env, info, 3, argv)) return NULL;

  int32_t *fds, *revents;
  size_t fds_len, revents_len;
  int64_t timeout;
  if (!arg_typed(env, argv[0], "fds", napi_int32_array, (void **)&fds, &fds_len) ||
      !arg_typed(env, argv[1], "revents", napi_int32_array, (void **)&revents, &revents_len) ||
      !arg_int(env, argv[2], "timeoutMs", -1, INT_MAX, &timeout)) {
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
  int ready = poll(pfds, fds_len, (int)timeout);
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

  napi_valuetype type;
  NAPI_CHECK(env, napi_typeof(env, argv[0], &type));
  if (type != napi_string) {
    throw_arg(env, ARG_TYPE, "path must be a string");
    return NULL;
  }
  char path[PATH_MAX];
  size_t path_len;
  NAPI_CHECK(env, napi_get_value_string_utf8(env, argv[0], NULL, 0, &path_len));
  if (path_len == 0 || path_len >= sizeof path) {
    throw_arg(env, ARG_RANGE, "path must be 1 to %d bytes", PATH_MAX - 1);
    return NULL;
  }
  NAPI_CHECK(env, napi_get_value_string_utf8(env, argv[0], path, sizeof path, &path_len));
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
      EXPORT_FN("writeFramesWithHeaders", write_frames_with_headers),
      EXPORT_FN("tapSetOffload", tap_set_offload),
      EXPORT_FN("checksum", checksum),
      EXPORT_FN("inNetns", in_netns),
  };
  if (napi_define_properties(env, exports, sizeof functions / sizeof functions[0], functions) !=
      napi_ok) {
    throw_napi(env, napi_generic_failure);
    return NULL;
  }
  return exports;
}

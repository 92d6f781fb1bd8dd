/*
 * How much a thread wake-up costs on this machine, on one CPU and across two: the floor under
 * any userspace data path's round trip, which wakes a thread at every hop. BENCHMARKS.md
 * explains the figures it gave here.
 *
 *   cc -O2 -pthread bench/wake-probe.c -o /tmp/wake-probe && /tmp/wake-probe
 *
 * Two threads ping-pong one byte over two pipes (two wake-ups per round trip), 2000 times with
 * 0.5 ms pauses, pinned to CPUs 0 and 0, then 0 and 1; each time once with the other CPUs idle
 * and once with a thread on each of CPUs 0 and 1 that does nothing but sched_yield() (as a
 * busy-polling forwarder does), so a wake-up finds the CPU running rather than halted.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define ROUNDS 2000

static int to_echo[2], from_echo[2];
static volatile int stop_spinning;

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static void pin(long cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

static void *echo(void *cpu) {
  pin((long)cpu);
  char b;
  while (read(to_echo[0], &b, 1) == 1 && b != 'q') write(from_echo[1], &b, 1);
  return NULL;
}

static void *spin(void *cpu) {
  pin((long)cpu);
  while (!stop_spinning) sched_yield();
  return NULL;
}

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static void probe(long other_cpu, int spinners) {
  static double us[ROUNDS];
  pthread_t echo_thread, spin_threads[2];
  stop_spinning = 0;
  if (pipe(to_echo) != 0 || pipe(from_echo) != 0) { perror("pipe"); exit(1); }
  pin(0);
  pthread_create(&echo_thread, NULL, echo, (void *)other_cpu);
  for (long i = 0; i < 2 && spinners; i++) pthread_create(&spin_threads[i], NULL, spin, (void *)i);
  usleep(100000);
  char b = 'x';
  for (int i = 0; i < ROUNDS; i++) {
    double t0 = now_us();
    if (write(to_echo[1], &b, 1) != 1 || read(from_echo[0], &b, 1) != 1) { perror("pipe"); exit(1); }
    us[i] = now_us() - t0;
    usleep(500);
  }
  qsort(us, ROUNDS, sizeof us[0], by_value);
  printf("CPU 0 <-> CPU %ld, %s: round trip (2 wake-ups) p50 %.1f us, p99 %.1f us\n", other_cpu,
         spinners ? "both CPUs busy yielding" : "other CPUs idle", us[ROUNDS / 2], us[ROUNDS * 99 / 100]);
  stop_spinning = 1;
  b = 'q';
  write(to_echo[1], &b, 1);
  pthread_join(echo_thread, NULL);
  for (int i = 0; i < 2 && spinners; i++) pthread_join(spin_threads[i], NULL);
  close(to_echo[0]); close(to_echo[1]); close(from_echo[0]); close(from_echo[1]);
}

int main(void) {
  if (sysconf(_SC_NPROCESSORS_ONLN) < 2) {
    fprintf(stderr, "wake-probe: needs at least 2 CPUs\n");
    return 2;
  }
  for (long other = 0; other <= 1; other++)
    for (int spinners = 0; spinners <= 1; spinners++) probe(other, spinners);
  return 0;
}

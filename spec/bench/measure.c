/*
 * measure.c - run a command once and append one line to OUT:
 *   wall_s cpu_s maxrss_kib
 * wall-clock seconds, the command's own user + system CPU seconds and its
 * peak resident set size, from wait4's rusage of that child alone (a server
 * or anything else on the machine never counts). A C program rather than a
 * Python one because a process's peak RSS includes the image it was forked
 * from: a child forked by Python starts at Python's 10+ MiB.
 *
 * Build (spec/bench/run.sh does this):  cc -O2 -o measure spec/bench/measure.c
 * Run:    measure [-t SECONDS] OUT -- CMD [ARGS...]
 * The command's stdout and stderr go to OUT.log. It fails (exit 1, the
 * log's tail on stderr) when the command fails or outlives -t SECONDS
 * (then it gets SIGTERM, and SIGKILL 5 s later).
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t child;
static volatile sig_atomic_t timed_out;

static void on_alarm(int sig) {
  (void)sig;
  if (!child) return;
  kill(child, timed_out ? SIGKILL : SIGTERM);
  timed_out = 1;
  alarm(5);
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void print_tail(const char *log) {
  char buf[2048];
  int fd = open(log, O_RDONLY);
  if (fd < 0) return;
  off_t end = lseek(fd, 0, SEEK_END);
  lseek(fd, end > (off_t)sizeof buf ? end - (off_t)sizeof buf : 0, SEEK_SET);
  ssize_t n = read(fd, buf, sizeof buf);
  if (n > 0) fwrite(buf, 1, (size_t)n, stderr);
  close(fd);
}

int main(int argc, char **argv) {
  unsigned timeout = 0;
  int i = 1;
  if (argc > 2 && strcmp(argv[1], "-t") == 0) {
    timeout = (unsigned)atoi(argv[2]);
    i = 3;
  }
  if (argc - i < 3 || strcmp(argv[i + 1], "--") != 0) {
    fprintf(stderr, "usage: %s [-t SECONDS] OUT -- CMD [ARGS...]\n", argv[0]);
    return 2;
  }
  const char *out = argv[i];
  char **cmd = argv + i + 2;
  char log[4096];
  snprintf(log, sizeof log, "%s.log", out);
  int logfd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
  if (logfd < 0) {
    perror(log);
    return 2;
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_alarm;
  sigaction(SIGALRM, &sa, NULL);

  double t0 = now();
  pid_t pid = fork();
  if (pid < 0) {
    perror("fork");
    return 2;
  }
  if (pid == 0) {
    dup2(logfd, 1);
    dup2(logfd, 2);
    close(logfd);
    execvp(cmd[0], cmd);
    fprintf(stderr, "cannot run %s: %s\n", cmd[0], strerror(errno));
    _exit(127);
  }
  child = pid;
  if (timeout) alarm(timeout);
  int status;
  struct rusage ru;
  while (wait4(pid, &status, 0, &ru) < 0) {
    if (errno != EINTR) {
      perror("wait4");
      return 2;
    }
  }
  double wall = now() - t0;
  child = 0;
  alarm(0);
  close(logfd);
  if (timed_out || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    fprintf(stderr, "%s failed (%s %d%s); its output ends with:\n", cmd[0],
            WIFEXITED(status) ? "exit" : "signal",
            WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status),
            timed_out ? ", timed out" : "");
    print_tail(log);
    return 1;
  }
  FILE *f = fopen(out, "a");
  if (!f) {
    perror(out);
    return 2;
  }
  double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
               (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
  fprintf(f, "%.4f %.4f %ld\n", wall, cpu, ru.ru_maxrss);
  fclose(f);
  return 0;
}

/*
 * hearth-pty: run a command on a new pseudo-terminal and relay it over plain pipes.
 *
 *   hearth-pty [-c COLS] [-r ROWS] [-u UID] [-C CGROUP_PROCS] [--] FILE [ARG...]
 *
 * The guest agent (Node, which has no PTY support) spawns this helper with stdin/stdout pipes
 * and an extra bidirectional control channel on fd 3 (libuv makes a socketpair for it):
 *
 *   stdin  (agent -> helper)  bytes written to the PTY master (what the user types)
 *   stdout (helper -> agent)  bytes read from the PTY master (the terminal output)
 *   fd 3   (both ways)        newline-terminated ASCII messages, at most 63 bytes each:
 *     agent -> helper  "resize <cols> <rows>\n"   TIOCSWINSZ on the master (the kernel sends
 *                                                 SIGWINCH to the terminal's foreground group)
 *     helper -> agent  "pid <pid>\n"              the command was exec'd (first message)
 *                      "error <errno> <text>\n"   the command could not be started (exit 127)
 *                      "exit <code>\n"            the command exited normally
 *                      "signal <signo>\n"         the command was killed by a signal
 *
 * The command runs in a new session with the PTY slave as its controlling terminal and as
 * stdin/stdout/stderr, in the helper's cwd and environment (execvp: FILE is looked up in PATH).
 * With -u the slave is chowned to UID first (the command itself switches user, e.g. setpriv).
 * With -C the helper writes its pid to that cgroup.procs file before forking, so the command and
 * everything it starts are in that cgroup from the start (failures are ignored).
 * The exit/signal message is sent as soon as the command is reaped; the helper then drains the
 * master (until EIO, i.e. no process holds the slave, or 100 ms without output), flushes stdout
 * and exits with the command's status (128+signo for a signal death). If fd 3 is not open the
 * helper still works (status only via its exit code), which is handy for manual testing.
 *
 * SIGTERM/SIGHUP/SIGINT to the helper are forwarded as SIGHUP to the command's process group.
 * If the agent goes away (stdout EPIPE), the command's process group gets SIGHUP.
 *
 * Built statically by the image build: gcc -static -Os -o hearth-pty hearth-pty.c -lutil
 *
 * A second mode serves the agent's `/init` without starting a process per call (under software
 * emulation every fork+exec costs hundreds of milliseconds):
 *
 *   hearth-pty --sys
 *
 * The agent starts it once, as root, before the template snapshot is taken, so it is already
 * running after every restore. It reads newline-terminated requests on stdin and answers each
 * with one line on stdout, "ok\n" or "err <errno> <text>\n":
 *   "clock <sec> <nsec>"  clock_settime(CLOCK_REALTIME)
 *   "seed <hex>"          write the bytes (at most 512) to /dev/urandom (mixed into the input
 *                         pool), then ioctl(RNDRESEEDCRNG) so the CRNG reseeds now
 *   "ping"                nothing (liveness)
 * It exits on EOF on stdin (the agent went away).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/random.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define CTL_FD 3
#define BUF_SIZE 65536
#define DRAIN_IDLE_MS 100

static int sig_pipe[2] = {-1, -1};
static volatile sig_atomic_t got_term = 0;

static void on_signal(int sig) {
  int saved = errno;
  if (sig != SIGCHLD) got_term = 1;
  char c = (char)sig;
  if (write(sig_pipe[1], &c, 1) < 0) { /* pipe full: a wakeup is already pending */ }
  errno = saved;
}

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("hearth-pty: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(125);
}

static int ctl_ok = 0;

/* Control messages are tiny; a blocking write of a whole line is fine. */
static void ctl_send(const char *fmt, ...) {
  if (!ctl_ok) return;
  char line[64];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if (n >= (int)sizeof line) n = sizeof line - 1, line[n - 1] = '\n';
  int fl = fcntl(CTL_FD, F_GETFL);
  if (fl >= 0) fcntl(CTL_FD, F_SETFL, fl & ~O_NONBLOCK);
  const char *p = line;
  while (n > 0) {
    ssize_t w = write(CTL_FD, p, (size_t)n);
    if (w < 0) {
      if (errno == EINTR) continue;
      ctl_ok = 0;
      break;
    }
    p += w;
    n -= (int)w;
  }
  if (fl >= 0 && ctl_ok) fcntl(CTL_FD, F_SETFL, fl | O_NONBLOCK);
}

static int parse_uint(const char *s, unsigned long max, unsigned long *out) {
  char *end;
  errno = 0;
  unsigned long v = strtoul(s, &end, 10);
  if (errno || end == s || *end != '\0' || v > max) return -1;
  *out = v;
  return 0;
}

static void set_nonblock(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl >= 0) fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Handle one control line from the agent. Unknown or malformed lines are ignored. */
static void ctl_line(int master, char *line) {
  unsigned int cols, rows;
  if (sscanf(line, "resize %u %u", &cols, &rows) == 2 && cols > 0 && rows > 0 && cols <= 65535 && rows <= 65535) {
    struct winsize ws = {.ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols};
    ioctl(master, TIOCSWINSZ, &ws);
  }
}

static int hexval(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static void sys_reply(int err, const char *what) {
  char line[160];
  int n = err ? snprintf(line, sizeof line, "err %d %s: %s\n", err, what, strerror(err)) : snprintf(line, sizeof line, "ok\n");
  if (n < 0) return;
  if (n >= (int)sizeof line) n = sizeof line - 1, line[n - 1] = '\n';
  const char *p = line;
  while (n > 0) {
    ssize_t w = write(STDOUT_FILENO, p, (size_t)n);
    if (w < 0) {
      if (errno == EINTR) continue;
      exit(0); /* the agent went away */
    }
    p += w;
    n -= (int)w;
  }
}

static void sys_request(char *line) {
  long long sec;
  long nsec;
  if (strcmp(line, "ping") == 0) { sys_reply(0, ""); return; }
  if (sscanf(line, "clock %lld %ld", &sec, &nsec) == 2) {
    if (sec < 0 || nsec < 0 || nsec >= 1000000000L) { sys_reply(EINVAL, "clock"); return; }
    struct timespec ts = {.tv_sec = (time_t)sec, .tv_nsec = nsec};
    sys_reply(clock_settime(CLOCK_REALTIME, &ts) < 0 ? errno : 0, "clock_settime");
    return;
  }
  if (strncmp(line, "seed ", 5) == 0) {
    unsigned char buf[512];
    size_t n = 0;
    const char *h = line + 5;
    while (h[0] && h[1] && n < sizeof buf) {
      int hi = hexval(h[0]), lo = hexval(h[1]);
      if (hi < 0 || lo < 0) break;
      buf[n++] = (unsigned char)(hi << 4 | lo);
      h += 2;
    }
    if (*h != '\0' || n == 0) { sys_reply(EINVAL, "seed"); return; }
    int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
    if (fd < 0) { sys_reply(errno, "open /dev/urandom"); return; }
    int err = 0;
    if (write(fd, buf, n) != (ssize_t)n) err = errno ? errno : EIO;
    else if (ioctl(fd, RNDRESEEDCRNG, 0) < 0) err = errno;
    close(fd);
    sys_reply(err, err ? "seed" : "");
    return;
  }
  sys_reply(EINVAL, "unknown request");
}

/* `hearth-pty --sys`: serve /init's clock and CRNG requests from one long-lived process. */
static int sys_main(void) {
  signal(SIGPIPE, SIG_IGN);
  char line[1200];
  size_t len = 0;
  int overlong = 0;
  for (;;) {
    ssize_t r = read(STDIN_FILENO, line + len, sizeof line - 1 - len);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return 0;
    len += (size_t)r;
    char *start = line, *nl;
    while ((nl = memchr(start, '\n', (size_t)(line + len - start))) != NULL) {
      *nl = '\0';
      if (overlong) { overlong = 0; sys_reply(E2BIG, "request"); }
      else sys_request(start);
      start = nl + 1;
    }
    len = (size_t)(line + len - start);
    memmove(line, start, len);
    if (len == sizeof line - 1) { overlong = 1; len = 0; }
  }
}

int main(int argc, char **argv) {
  unsigned long cols = 80, rows = 24, uid = 0;
  if (argc == 2 && strcmp(argv[1], "--sys") == 0) return sys_main();
  int have_uid = 0, opt;
  const char *cgroup_procs = NULL;
  while ((opt = getopt(argc, argv, "+c:r:u:C:")) != -1) {
    switch (opt) {
      case 'c': if (parse_uint(optarg, 65535, &cols) || cols == 0) die("bad -c %s", optarg); break;
      case 'r': if (parse_uint(optarg, 65535, &rows) || rows == 0) die("bad -r %s", optarg); break;
      case 'u': if (parse_uint(optarg, 0x7fffffffUL, &uid)) die("bad -u %s", optarg); have_uid = 1; break;
      case 'C': cgroup_procs = optarg; break;
      default: die("usage: hearth-pty [-c COLS] [-r ROWS] [-u UID] [-C CGROUP_PROCS] [--] FILE [ARG...]");
    }
  }
  if (optind >= argc) die("usage: hearth-pty [-c COLS] [-r ROWS] [-u UID] [-C CGROUP_PROCS] [--] FILE [ARG...]");
  char **cmd = argv + optind;

  ctl_ok = fcntl(CTL_FD, F_GETFD) >= 0;
  if (ctl_ok) fcntl(CTL_FD, F_SETFD, FD_CLOEXEC);

  struct winsize ws = {.ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols};
  int master, slave;
  if (openpty(&master, &slave, NULL, NULL, &ws) < 0) {
    int e = errno;
    ctl_send("error %d openpty: %s\n", e, strerror(e));
    die("openpty: %s", strerror(e));
  }
  fcntl(master, F_SETFD, FD_CLOEXEC);
  if (have_uid && fchown(slave, (uid_t)uid, (gid_t)-1) < 0) { /* not root: keep the default owner */ }

  if (pipe2(sig_pipe, O_CLOEXEC | O_NONBLOCK) < 0) die("pipe2: %s", strerror(errno));
  int err_pipe[2];
  if (pipe2(err_pipe, O_CLOEXEC) < 0) die("pipe2: %s", strerror(errno));

  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
  sigaction(SIGCHLD, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGHUP, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);

  if (cgroup_procs) {
    int fd = open(cgroup_procs, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd >= 0) {
      char line[32];
      int len = snprintf(line, sizeof line, "%d\n", (int)getpid());
      if (write(fd, line, (size_t)len) < 0) { /* stay where we are */ }
      close(fd);
    }
  }

  pid_t child = fork();
  if (child < 0) {
    int e = errno;
    ctl_send("error %d fork: %s\n", e, strerror(e));
    die("fork: %s", strerror(e));
  }
  if (child == 0) {
    /* Default dispositions: ignored signals (SIGPIPE) would survive exec. */
    signal(SIGPIPE, SIG_DFL);
    signal(SIGCHLD, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    signal(SIGQUIT, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    int e = 0;
    if (setsid() < 0 || ioctl(slave, TIOCSCTTY, 0) < 0) e = errno;
    if (!e && (dup2(slave, 0) < 0 || dup2(slave, 1) < 0 || dup2(slave, 2) < 0)) e = errno;
    if (!e) {
      if (slave > 2) close(slave);
      execvp(cmd[0], cmd);
      e = errno;
    }
    if (write(err_pipe[1], &e, sizeof e) < 0) { /* parent sees EOF and exit 127 */ }
    _exit(127);
  }
  close(slave);
  close(err_pipe[1]);
  int exec_errno = 0;
  ssize_t en;
  do en = read(err_pipe[0], &exec_errno, sizeof exec_errno); while (en < 0 && errno == EINTR);
  close(err_pipe[0]);
  if (en == (ssize_t)sizeof exec_errno) {
    ctl_send("error %d %s: %s\n", exec_errno, cmd[0], strerror(exec_errno));
    waitpid(child, NULL, 0);
    fprintf(stderr, "hearth-pty: %s: %s\n", cmd[0], strerror(exec_errno));
    return 127;
  }
  ctl_send("pid %d\n", (int)child);

  set_nonblock(master);
  set_nonblock(0);
  set_nonblock(1);
  if (ctl_ok) set_nonblock(CTL_FD);

  static char out_buf[BUF_SIZE], in_buf[BUF_SIZE];
  size_t out_len = 0, out_off = 0, in_len = 0, in_off = 0;
  char ctl_buf[64];
  size_t ctl_len = 0;
  int stdin_open = 1, master_open = 1, stdout_ok = 1;
  int child_done = 0, status = 0;
  long long last_output = now_ms();

  for (;;) {
    /* Reap the command (SIGCHLD wakes us through sig_pipe). */
    if (!child_done) {
      pid_t r = waitpid(child, &status, WNOHANG);
      if (r == child) {
        child_done = 1;
        last_output = now_ms();
        if (WIFSIGNALED(status)) ctl_send("signal %d\n", WTERMSIG(status));
        else ctl_send("exit %d\n", WEXITSTATUS(status));
      }
    }
    if (got_term && !child_done) {
      got_term = 0;
      kill(-child, SIGHUP);
    }
    if (child_done) {
      if (!master_open && out_len == 0) break;
      if (!stdout_ok) break;
      if (master_open && out_len == 0 && now_ms() - last_output >= DRAIN_IDLE_MS) master_open = 0;
      if (!master_open && out_len == 0) break;
    }

    struct pollfd fds[5];
    int n = 0, i_sig = -1, i_master = -1, i_in = -1, i_ctl = -1;
    fds[n] = (struct pollfd){.fd = sig_pipe[0], .events = POLLIN};
    i_sig = n++;
    if (master_open) {
      short ev = 0;
      if (out_len == 0) ev |= POLLIN;
      if (in_len > 0) ev |= POLLOUT;
      fds[n] = (struct pollfd){.fd = master, .events = ev};
      i_master = n++;
    }
    if (stdin_open && in_len == 0 && master_open) {
      fds[n] = (struct pollfd){.fd = 0, .events = POLLIN};
      i_in = n++;
    }
    if (out_len > 0 && stdout_ok) {
      fds[n] = (struct pollfd){.fd = 1, .events = POLLOUT};
      n++;
    }
    if (ctl_ok) {
      fds[n] = (struct pollfd){.fd = CTL_FD, .events = POLLIN};
      i_ctl = n++;
    }
    int timeout = child_done ? DRAIN_IDLE_MS : -1;
    int pr = poll(fds, (nfds_t)n, timeout);
    if (pr < 0) {
      if (errno == EINTR) continue;
      die("poll: %s", strerror(errno));
    }

    if (fds[i_sig].revents) {
      char drain[64];
      while (read(sig_pipe[0], drain, sizeof drain) > 0) {}
    }
    if (i_ctl >= 0 && fds[i_ctl].revents) {
      ssize_t r = read(CTL_FD, ctl_buf + ctl_len, sizeof ctl_buf - 1 - ctl_len);
      if (r > 0) {
        ctl_len += (size_t)r;
        char *start = ctl_buf, *nl;
        while ((nl = memchr(start, '\n', ctl_len - (size_t)(start - ctl_buf))) != NULL) {
          *nl = '\0';
          ctl_line(master, start);
          start = nl + 1;
        }
        ctl_len -= (size_t)(start - ctl_buf);
        memmove(ctl_buf, start, ctl_len);
        if (ctl_len == sizeof ctl_buf - 1) ctl_len = 0; /* overlong line: drop it */
      } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
        ctl_ok = 0; /* the agent closed the channel; keep relaying */
      }
    }
    if (i_master >= 0 && fds[i_master].revents) {
      short re = fds[i_master].revents;
      if ((re & POLLOUT) && in_len > 0) {
        ssize_t w = write(master, in_buf + in_off, in_len);
        if (w > 0) {
          in_off += (size_t)w;
          in_len -= (size_t)w;
          if (in_len == 0) in_off = 0;
        } else if (w < 0 && errno != EAGAIN && errno != EINTR) {
          in_len = 0, in_off = 0;
        }
      }
      if (re & (POLLIN | POLLHUP | POLLERR)) {
        if (out_len == 0) {
          ssize_t r = read(master, out_buf, sizeof out_buf);
          if (r > 0) {
            out_len = (size_t)r;
            out_off = 0;
            last_output = now_ms();
          } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
            /* EIO: no process has the slave open any more. */
            master_open = 0;
          }
        }
      }
    }
    if (i_in >= 0 && fds[i_in].revents) {
      ssize_t r = read(0, in_buf, sizeof in_buf);
      if (r > 0) {
        in_len = (size_t)r;
        in_off = 0;
      } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
        stdin_open = 0;
      }
    }
    /* Try stdout right away (usually succeeds without another poll round). */
    if (out_len > 0 && stdout_ok) {
      ssize_t w = write(1, out_buf + out_off, out_len);
      if (w > 0) {
        out_off += (size_t)w;
        out_len -= (size_t)w;
      } else if (w < 0 && errno != EAGAIN && errno != EINTR) {
        /* The agent is gone: hang up the command and finish. */
        stdout_ok = 0;
        out_len = 0;
        if (!child_done) kill(-child, SIGHUP);
      }
    }
    if (!stdout_ok && !child_done) {
      /* Wait for the command to go after the hangup. */
      master_open = 0;
    }
  }

  close(master);
  if (!child_done) {
    waitpid(child, &status, 0);
    if (WIFSIGNALED(status)) ctl_send("signal %d\n", WTERMSIG(status));
    else ctl_send("exit %d\n", WEXITSTATUS(status));
  }
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return WEXITSTATUS(status);
}

// The Unix socket on which Firecracker hands over its userfaultfd: one
// connection, one sendmsg carrying a JSON array of memory regions plus the
// uffd as SCM_RIGHTS (docs/uffd.md, "The handshake"). Firecracker never closes the stream,
// so the end of the message is found by scanning for the end of the JSON
// value, not by EOF.
#include "common.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <algorithm>
#include <mutex>
#include <vector>

namespace hearth {
namespace {

// Incremental scanner: has a complete top-level JSON array/object arrived?
struct JsonScan {
  int depth = 0;
  bool in_str = false, esc = false, started = false;
  size_t pos = 0;
  // Returns true once the top-level value is complete; throws on garbage.
  bool Feed(const std::string& s) {
    for (; pos < s.size(); pos++) {
      char c = s[pos];
      if (in_str) {
        if (esc) esc = false;
        else if (c == '\\') esc = true;
        else if (c == '"') in_str = false;
        continue;
      }
      if (!started) {
        if (c == ' ' || c == '\n' || c == '\r' || c == '\t') continue;
        if (c != '[' && c != '{') throw std::runtime_error("handshake does not start with a JSON array");
        started = true;
      }
      if (c == '"') in_str = true;
      else if (c == '[' || c == '{') depth++;
      else if (c == ']' || c == '}') {
        if (--depth == 0) {
          pos++;
          return true;
        }
      }
    }
    return false;
  }
};

struct ListenerState {
  std::mutex mu;
  Fd listen_fd;
  Fd wake_fd;  // eventfd: close() wakes a pending accept
  bool closed = false;
};

int PollRemaining(uint64_t deadline_ns) {
  uint64_t now = NowNs();
  if (now >= deadline_ns) return 0;
  uint64_t ms = (deadline_ns - now + 999999) / 1000000;
  return ms > 1000000000 ? 1000000000 : int(ms);
}

struct Accepted {
  std::string json;
  int uffd = -1;
  int conn = -1;
  int peer_pid = 0;
  int peer_uid = -1;
};

// Waits for fd (or the wake eventfd) to be readable until the deadline.
void WaitReadable(int fd, int wake, uint64_t deadline_ns, const char* what) {
  for (;;) {
    struct pollfd p[2] = {{fd, POLLIN, 0}, {wake, POLLIN, 0}};
    int timeout = PollRemaining(deadline_ns);
    if (timeout == 0) throw SysError(what, ETIMEDOUT);
    int n = poll(p, 2, timeout);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw SysError("poll", errno);
    }
    if (p[1].revents) throw std::runtime_error(std::string(what) + ": listener closed");
    if (p[0].revents) return;
  }
}

Accepted DoAccept(const std::shared_ptr<ListenerState>& st, uint64_t timeout_ms) {
  int lfd, wake;
  {
    std::lock_guard<std::mutex> g(st->mu);
    if (st->closed) throw std::runtime_error("accept: listener closed");
    lfd = st->listen_fd.get();
    wake = st->wake_fd.get();
  }
  uint64_t deadline = NowNs() + timeout_ms * 1000000ull;
  WaitReadable(lfd, wake, deadline, "waiting for Firecracker to connect");
  Fd conn(accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC));
  if (!conn.valid()) throw SysError("accept4", errno);

  Accepted out;
  struct ucred cred;
  socklen_t clen = sizeof(cred);
  if (getsockopt(conn.get(), SOL_SOCKET, SO_PEERCRED, &cred, &clen) == 0) {
    out.peer_pid = cred.pid;
    out.peer_uid = int(cred.uid);
  }

  Fd uffd;
  JsonScan scan;
  std::string data;
  std::vector<char> buf(64 * 1024);
  int reads_without_fd = 0;
  bool complete_without_fd = false;
  for (;;) {
    if (complete_without_fd) {
      try {
        WaitReadable(conn.get(), wake, deadline, "waiting for the handshake");
      } catch (const SysError& e) {
        if (e.err() == ETIMEDOUT) throw std::runtime_error("handshake: region list arrived without a userfaultfd (SCM_RIGHTS)");
        throw;
      }
    } else {
      WaitReadable(conn.get(), wake, deadline, "waiting for the handshake");
    }
    alignas(struct cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * 8)];
    struct iovec iov = {buf.data(), buf.size()};
    struct msghdr msg = {};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf;
    msg.msg_controllen = sizeof(cbuf);
    ssize_t n = recvmsg(conn.get(), &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      throw SysError("recvmsg", errno);
    }
    for (struct cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      size_t nfds = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      int* fds = reinterpret_cast<int*>(CMSG_DATA(c));
      for (size_t i = 0; i < nfds; i++) {
        if (!uffd.valid()) uffd.reset(fds[i]);
        else ::close(fds[i]);  // only one fd is expected
      }
    }
    if (msg.msg_flags & MSG_CTRUNC) throw std::runtime_error("handshake: control data truncated");
    if (n == 0) {
      throw std::runtime_error(data.empty() ? "handshake: peer closed the connection before sending anything"
                                            : "handshake: peer closed the connection in the middle of the region list");
    }
    data.append(buf.data(), size_t(n));
    if (data.size() > (1u << 20)) throw std::runtime_error("handshake: region list larger than 1 MiB");
    if (scan.Feed(data)) {
      if (uffd.valid()) break;
      // The fd travels with the first bytes; tolerate a few reads (and half a
      // second) without it, as Firecracker's example handler does.
      if (++reads_without_fd > 5) throw std::runtime_error("handshake: region list arrived without a userfaultfd (SCM_RIGHTS)");
      complete_without_fd = true;
      deadline = std::min<uint64_t>(deadline, NowNs() + 500000000ull);
    }
  }
  out.json = data.substr(0, scan.pos);
  out.uffd = uffd.release();
  out.conn = conn.release();
  return out;
}

class Listener : public Napi::ObjectWrap<Listener> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "Listener",
                       {InstanceMethod("accept", &Listener::Accept), InstanceMethod("close", &Listener::Close),
                        InstanceAccessor("fd", &Listener::GetFd, nullptr)});
  }

  explicit Listener(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Listener>(info), st_(std::make_shared<ListenerState>()) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "Listener(path: string)");
    std::string path = info[0].As<Napi::String>().Utf8Value();
    struct sockaddr_un addr = {};
    addr.sun_family = AF_UNIX;
    if (path.empty() || path.size() >= sizeof(addr.sun_path))
      throw Napi::RangeError::New(env, "socket path is empty or longer than 107 bytes: " + path);
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    Fd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd.valid()) throw Napi::Error::New(env, SysError("socket", errno).what());
    if (bind(fd.get(), reinterpret_cast<struct sockaddr*>(&addr), sizeof(addr)) != 0)
      throw Napi::Error::New(env, SysError("bind " + path, errno).what());
    if (chmod(path.c_str(), 0600) != 0) throw Napi::Error::New(env, SysError("chmod " + path, errno).what());
    if (listen(fd.get(), 4) != 0) throw Napi::Error::New(env, SysError("listen", errno).what());
    Fd wake(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!wake.valid()) throw Napi::Error::New(env, SysError("eventfd", errno).what());
    st_->listen_fd = std::move(fd);
    st_->wake_fd = std::move(wake);
  }

  ~Listener() override { CloseState(); }

 private:
  std::shared_ptr<ListenerState> st_;

  void CloseState() {
    std::lock_guard<std::mutex> g(st_->mu);
    if (st_->closed) return;
    st_->closed = true;
    uint64_t one = 1;
    if (st_->wake_fd.valid()) (void)!write(st_->wake_fd.get(), &one, sizeof(one));
    // Stop accepting now; the fds themselves are closed with the state, once no
    // accept thread can still be polling them (closing a polled fd could let
    // its number be reused under the poll).
    if (st_->listen_fd.valid()) shutdown(st_->listen_fd.get(), SHUT_RDWR);
  }

  Napi::Value GetFd(const Napi::CallbackInfo& info) {
    std::lock_guard<std::mutex> g(st_->mu);
    return Napi::Number::New(info.Env(), st_->listen_fd.get());
  }

  Napi::Value Accept(const Napi::CallbackInfo& info) {
    uint64_t timeout_ms = info.Length() > 0 ? ToU64(info[0], "timeoutMs") : 10000;
    auto st = st_;
    return RunOnThread(info.Env(), "hearth-uffd-accept", [st, timeout_ms]() -> Completion {
      Accepted a = DoAccept(st, timeout_ms);
      return [a](Napi::Env env) -> Napi::Value {
        Napi::Object o = Napi::Object::New(env);
        o.Set("json", Napi::String::New(env, a.json));
        o.Set("uffd", Napi::Number::New(env, a.uffd));
        o.Set("conn", Napi::Number::New(env, a.conn));
        o.Set("peerPid", Napi::Number::New(env, a.peer_pid));
        o.Set("peerUid", Napi::Number::New(env, a.peer_uid));
        return o;
      };
    });
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    CloseState();
    return info.Env().Undefined();
  }
};

}  // namespace

Napi::Function InitListener(Napi::Env env) { return Listener::Init(env); }

}  // namespace hearth

/* The test program run inside the kernel VM (statically linked, so the
 * initramfs needs nothing else): performs the operations the enforcement
 * tests and the open() benchmark need and prints one parseable line each,
 * "TYR-VM <test> key=value ...".
 *
 *   probe open PATH             open(PATH, O_RDONLY): the errno (0: opened)
 *   probe write PATH            open(PATH, O_WRONLY|O_CREAT)
 *   probe rdwr PATH             open(PATH, O_RDWR)
 *   probe exec PATH             execv(PATH): the errno if it returns
 *   probe governed-child PATH [write]
 *                               wait until this process is refused PATH (its
 *                               agent was classified), then fork: does the
 *                               child's very first open of PATH fail too?
 *   probe connect IP PORT       connect() a UDP socket to IPv4 IP:PORT: the errno
 *   probe governed-connect IP PORT
 *                               as governed-child, for a UDP connect()
 *   probe swap STOPFILE A B     open A, open B, pause 1 ms, ... until STOPFILE
 *                               exists; counts per path and result (paced
 *                               so tyrd, emulated, keeps up with the events)
 *   probe bench N PATH          N open()+close() of PATH: ns per pair
 *   probe agent MARKER OP...    wait until this process is refused reading
 *                               MARKER (its agent was classified), then each
 *                               OP in turn, one line each ("TYR-VM agent-<op>
 *                               path=... errno=..."); with MARKER "-", no
 *                               wait and lines "TYR-VM plain-<op> ...":
 *                                 open:PATH  link:FROM:TO  rename:FROM:TO
 *                                 mount:DIR (a tmpfs over DIR)
 *                                 bind:UID:DIR:MNT:FILE (as UID, in a new user
 *                                   and mount namespace, bind DIR on MNT, open
 *                                   MNT/FILE)
 *                                 chroot:UID:ROOT:FILE (as UID, in a new user
 *                                   namespace, chroot to ROOT, open FILE)
 *                                 overlay:UID:LOWER:MNT:FILE (as UID, in a new
 *                                   user and mount namespace, a read-only
 *                                   overlay of LOWER on MNT, open MNT/FILE)
 *                                 bindmv:UID:DIR:MNT:FROM:TO (as UID, in a new
 *                                   user and mount namespace, bind DIR on MNT,
 *                                   rename MNT/FROM to MNT/TO)
 *                                 symlink:TARGET:LINK  fifo:PATH  unlink:PATH
 *                                 exchange:A:B (renameat2 RENAME_EXCHANGE)
 *                                 truncate:PATH (to 0 bytes, by path)
 *                                 uconnect:PATH (connect a unix stream socket;
 *                                   "@name": the abstract name)
 *                                 usend:PATH (send a unix datagram)
 *                                 ptrace:PIDFILE (attach to the process whose
 *                                   pid PIDFILE holds, then detach)
 *                                 deep:DIR (below DIR, 20 directories of 250
 *                                   bytes each, made when missing; open DIR/
 *                                   ../f, created when missing, by a path
 *                                   longer than the kernel's PATH_MAX)
 *   probe serve STREAM DGRAM PIDFILE [ABSTRACT]
 *                               listen on unix stream socket STREAM (and on
 *                               the abstract name ABSTRACT), bind datagram
 *                               socket DGRAM, write the pid to PIDFILE,
 *                               then wait forever
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int try_open(const char *path, int flags)
{
	int fd = open(path, flags, 0644);
	if (fd < 0)
		return errno;
	close(fd);
	return 0;
}

static int try_connect(const char *ip, const char *port)
{
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(port)) };
	if (inet_pton(AF_INET, ip, &addr.sin_addr) != 1)
		return EINVAL;
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0)
		return errno;
	int err = connect(fd, (struct sockaddr *)&addr, sizeof(addr)) ? errno : 0;
	close(fd);
	return err;
}

/* An open (path, flags) or a UDP connect (ip, port). */
struct operation {
	const char *path;
	int flags;
	const char *ip;
	const char *port;
};

static int attempt(const struct operation *op)
{
	return op->path ? try_open(op->path, op->flags) : try_connect(op->ip, op->port);
}

/* Waits (up to 10 s) until this process is refused `op` with `refused` —
 * tyrd has classified it — then forks: is the child's very first syscall
 * refused too? Prints one line, "TYR-VM <test> <key>=<value> ...". */
static int governed(const char *test, const char *key, const char *value, const struct operation *op, int refused)
{
	int waited = 0;
	while (attempt(op) != refused && waited < 400) {
		usleep(25000);
		waited++;
	}
	int parent = attempt(op);
	fflush(stdout);
	pid_t child = fork();
	if (child == 0) {
		int err = attempt(op); /* the child's first syscall after fork */
		printf("TYR-VM %s %s=%s parent_errno=%d child_errno=%d child_pid=%d waited_ms=%d\n", test, key, value,
		       parent, err, getpid(), waited * 25);
		return 0;
	}
	int status;
	waitpid(child, &status, 0);
	return 0;
}

static int write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY);
	if (fd < 0)
		return errno;
	int err = write(fd, text, strlen(text)) < 0 ? errno : 0;
	close(fd);
	return err;
}

/* Becomes UID, then root of a new user namespace (and mount namespace when
 * `mounts`): what an unprivileged agent can do with `unshare -Urm`. */
static int unprivileged_namespace(int uid, int mounts)
{
	char map[64];
	if (setgid(uid) || setuid(uid))
		return errno;
	/* Changing uid made the process undumpable, its /proc files root's. */
	prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
	if (unshare(CLONE_NEWUSER | (mounts ? CLONE_NEWNS : 0)))
		return errno;
	snprintf(map, sizeof(map), "0 %d 1\n", uid);
	if (write_file("/proc/self/setgroups", "deny") || write_file("/proc/self/uid_map", map) ||
	    write_file("/proc/self/gid_map", map))
		return errno ? errno : EPERM;
	if (mounts && mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL))
		return errno;
	return 0;
}

/* A unix socket address for PATH ("@name": the abstract name), and its length. */
static struct sockaddr_un unix_address(const char *path, socklen_t *len)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	strncpy(addr.sun_path, path, sizeof(addr.sun_path) - 1);
	*len = sizeof(addr);
	if (path[0] == '@') {
		addr.sun_path[0] = 0;
		*len = offsetof(struct sockaddr_un, sun_path) + strlen(path);
	}
	return addr;
}

/* Connects (SOCK_STREAM) or sends a datagram (SOCK_DGRAM) to PATH: the errno. */
static int try_unix(const char *path, int type)
{
	socklen_t len;
	struct sockaddr_un addr = unix_address(path, &len);
	int fd = socket(AF_UNIX, type, 0);
	if (fd < 0)
		return errno;
	int err = 0;
	if (type == SOCK_STREAM)
		err = connect(fd, (struct sockaddr *)&addr, len) ? errno : 0;
	else
		err = sendto(fd, "x", 1, 0, (struct sockaddr *)&addr, len) < 0 ? errno : 0;
	close(fd);
	return err;
}

/* Attaches to the process whose pid PIDFILE holds, then detaches: the errno. */
static int try_ptrace(const char *pidfile)
{
	FILE *f = fopen(pidfile, "r");
	int pid = 0;
	if (!f)
		return errno;
	if (fscanf(f, "%d", &pid) != 1)
		pid = 0;
	fclose(f);
	if (pid <= 0)
		return EINVAL;
	if (ptrace(PTRACE_ATTACH, pid, NULL, NULL))
		return errno;
	waitpid(pid, NULL, __WALL);
	ptrace(PTRACE_DETACH, pid, NULL, NULL);
	return 0;
}

/* Opens (creating it when missing) a file whose path is longer than
 * PATH_MAX, reached one directory at a time below DIR: the errno. */
static int try_deep(const char *dir)
{
	char name[251];
	memset(name, 'd', sizeof(name) - 1);
	name[sizeof(name) - 1] = 0;
	int cwd = open(".", O_RDONLY | O_DIRECTORY);
	int err = chdir(dir) ? errno : 0;
	for (int i = 0; i < 20 && !err; i++) {
		if (mkdir(name, 0755) && errno != EEXIST)
			err = errno;
		else if (chdir(name))
			err = errno;
	}
	if (!err && access("f", F_OK))
		err = try_open("f", O_WRONLY | O_CREAT);
	if (!err)
		err = try_open("f", O_RDONLY);
	if (cwd >= 0) {
		if (fchdir(cwd))
			err = err ? err : errno;
		close(cwd);
	}
	return err;
}

/* One OP of `probe agent`, in a child for the namespace ones; prints its line. */
static void agent_op(const char *who, char *op)
{
	char *fields[6] = { 0 };
	int n = 0;
	for (char *field = strtok(op, ":"); field && n < 6; field = strtok(NULL, ":"))
		fields[n++] = field;
	int err = EINVAL;
	const char *path = n > 1 ? fields[1] : "";
	if (!strcmp(fields[0], "open") && n == 2) {
		err = try_open(path, O_RDONLY);
	} else if (!strcmp(fields[0], "link") && n == 3) {
		err = link(fields[1], fields[2]) ? errno : 0;
	} else if (!strcmp(fields[0], "rename") && n == 3) {
		err = rename(fields[1], fields[2]) ? errno : 0;
	} else if (!strcmp(fields[0], "uconnect") && n == 2) {
		err = try_unix(path, SOCK_STREAM);
	} else if (!strcmp(fields[0], "usend") && n == 2) {
		err = try_unix(path, SOCK_DGRAM);
	} else if (!strcmp(fields[0], "symlink") && n == 3) {
		path = fields[2];
		err = symlink(fields[1], fields[2]) ? errno : 0;
	} else if (!strcmp(fields[0], "exchange") && n == 3) {
		err = renameat2(AT_FDCWD, fields[1], AT_FDCWD, fields[2], RENAME_EXCHANGE) ? errno : 0;
	} else if (!strcmp(fields[0], "fifo") && n == 2) {
		err = mkfifo(path, 0600) ? errno : 0;
	} else if (!strcmp(fields[0], "unlink") && n == 2) {
		err = unlink(path) ? errno : 0;
	} else if (!strcmp(fields[0], "truncate") && n == 2) {
		err = truncate(path, 0) ? errno : 0;
	} else if (!strcmp(fields[0], "bindmv") && n == 6) {
		fflush(stdout);
		pid_t child = fork();
		if (child == 0) {
			int setup = unprivileged_namespace(atoi(fields[1]), 1);
			if (!setup)
				setup = mount(fields[2], fields[3], NULL, MS_BIND | MS_REC, NULL) ? errno : 0;
			char from[4096], to[4096];
			snprintf(from, sizeof(from), "%s/%s", fields[3], fields[4]);
			snprintf(to, sizeof(to), "%s/%s", fields[3], fields[5]);
			int moved = setup ? -1 : rename(from, to) ? errno : 0;
			printf("TYR-VM %s-%s path=%s setup_errno=%d errno=%d\n", who, fields[0], to, setup, moved);
			exit(0);
		}
		int status;
		waitpid(child, &status, 0);
		return;
	} else if (!strcmp(fields[0], "deep") && n == 2) {
		err = try_deep(path);
	} else if (!strcmp(fields[0], "ptrace") && n == 2) {
		err = try_ptrace(path);
	} else if (!strcmp(fields[0], "mount") && n == 2) {
		err = mount("tmpfs", fields[1], "tmpfs", 0, NULL) ? errno : 0;
	} else if ((!strcmp(fields[0], "bind") && n == 5) || (!strcmp(fields[0], "chroot") && n == 4) ||
		   (!strcmp(fields[0], "overlay") && n == 5)) {
		int bind = strcmp(fields[0], "chroot") != 0;
		int overlay = !strcmp(fields[0], "overlay");
		path = fields[n - 1];
		fflush(stdout);
		pid_t child = fork();
		if (child == 0) {
			int setup = unprivileged_namespace(atoi(fields[1]), bind);
			char target[4096];
			/* Read-only: two lower layers, no upper to need xattrs. */
			char options[512];
			snprintf(options, sizeof(options), "lowerdir=%s:/tmp/ovl-empty", fields[2]);
			if (!setup && overlay) {
				mkdir("/tmp/ovl-empty", 0700);
				setup = mount("overlay", fields[3], "overlay", 0, options) ? errno : 0;
			} else if (!setup && bind) {
				setup = mount(fields[2], fields[3], NULL, MS_BIND | MS_REC, NULL) ? errno : 0;
			}
			if (!setup && !bind)
				setup = chroot(fields[2]) || chdir("/") ? errno : 0;
			snprintf(target, sizeof(target), "%s/%s", bind ? fields[3] : "", fields[n - 1]);
			int opened = setup ? -1 : try_open(target, O_RDONLY);
			printf("TYR-VM %s-%s path=%s setup_errno=%d errno=%d\n", who, fields[0], target, setup, opened);
			exit(0);
		}
		int status;
		waitpid(child, &status, 0);
		return;
	}
	printf("TYR-VM %s-%s path=%s errno=%d\n", who, fields[0], path, err);
}

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: probe open|write|rdwr|exec|connect|governed-child|governed-connect|swap|bench ...\n");
		return 2;
	}
	const char *mode = argv[1];
	if (!strcmp(mode, "open") || !strcmp(mode, "write") || !strcmp(mode, "rdwr")) {
		int flags = !strcmp(mode, "open") ? O_RDONLY : !strcmp(mode, "rdwr") ? O_RDWR : (O_WRONLY | O_CREAT);
		printf("TYR-VM %s path=%s errno=%d\n", mode, argv[2], try_open(argv[2], flags));
		return 0;
	}
	if (!strcmp(mode, "exec")) {
		fflush(stdout);
		char *args[] = { argv[2], "true", NULL };
		execv(argv[2], args);
		printf("TYR-VM exec path=%s errno=%d\n", argv[2], errno);
		return 0;
	}
	if (!strcmp(mode, "governed-child")) {
		struct operation op = { .path = argv[2] };
		op.flags = argc > 3 && !strcmp(argv[3], "write") ? (O_WRONLY | O_CREAT) : O_RDONLY;
		return governed("governed-child", "path", argv[2], &op, EPERM);
	}
	if (!strcmp(mode, "agent") && argc >= 3) {
		int governed = strcmp(argv[2], "-") != 0;
		if (governed) {
			struct operation marker = { .path = argv[2], .flags = O_RDONLY };
			int waited = 0;
			while (attempt(&marker) != EPERM && waited < 400) {
				usleep(25000);
				waited++;
			}
			printf("TYR-VM agent-ready marker=%s errno=%d waited_ms=%d\n", argv[2], attempt(&marker),
			       waited * 25);
		}
		for (int i = 3; i < argc; i++)
			agent_op(governed ? "agent" : "plain", argv[i]);
		return 0;
	}
	if (!strcmp(mode, "serve") && argc >= 5) {
		socklen_t stream_len, dgram_len, abstract_len;
		struct sockaddr_un stream = unix_address(argv[2], &stream_len), dgram = unix_address(argv[3], &dgram_len);
		struct sockaddr_un abstract = unix_address(argc > 5 ? argv[5] : "@", &abstract_len);
		int s = socket(AF_UNIX, SOCK_STREAM, 0), d = socket(AF_UNIX, SOCK_DGRAM, 0);
		int a = argc > 5 ? socket(AF_UNIX, SOCK_STREAM, 0) : -1;
		unlink(argv[2]);
		unlink(argv[3]);
		if (s < 0 || d < 0 || bind(s, (struct sockaddr *)&stream, stream_len) || listen(s, 64) ||
		    bind(d, (struct sockaddr *)&dgram, dgram_len) ||
		    (a >= 0 && (bind(a, (struct sockaddr *)&abstract, abstract_len) || listen(a, 64)))) {
			printf("TYR-VM serve errno=%d\n", errno);
			return 1;
		}
		chmod(argv[2], 0777);
		chmod(argv[3], 0777);
		FILE *f = fopen(argv[4], "w");
		if (f) {
			fprintf(f, "%d\n", getpid());
			fclose(f);
		}
		printf("TYR-VM serve errno=0\n");
		fflush(stdout);
		for (;;)
			pause();
	}
	if (!strcmp(mode, "connect") && argc >= 4) {
		printf("TYR-VM connect ip=%s errno=%d\n", argv[2], try_connect(argv[2], argv[3]));
		return 0;
	}
	if (!strcmp(mode, "governed-connect") && argc >= 4) {
		struct operation op = { .ip = argv[2], .port = argv[3] };
		return governed("governed-connect", "ip", argv[2], &op, ECONNREFUSED);
	}
	if (!strcmp(mode, "swap") && argc >= 5) {
		long counts[2][2] = { { 0, 0 }, { 0, 0 } }; /* [path][denied] */
		long other = 0;
		while (access(argv[2], F_OK) != 0) {
			for (int p = 0; p < 2; p++) {
				int err = try_open(argv[3 + p], O_RDONLY);
				if (err == 0 || err == EPERM)
					counts[p][err == EPERM]++;
				else
					other++;
			}
			usleep(1000);
		}
		printf("TYR-VM swap a_allowed=%ld a_denied=%ld b_allowed=%ld b_denied=%ld other=%ld\n", counts[0][0],
		       counts[0][1], counts[1][0], counts[1][1], other);
		return 0;
	}
	if (!strcmp(mode, "bench") && argc >= 4) {
		long n = atol(argv[2]);
		long long start = now_ns();
		for (long i = 0; i < n; i++) {
			int fd = open(argv[3], O_RDONLY);
			if (fd >= 0)
				close(fd);
		}
		long long elapsed = now_ns() - start;
		printf("TYR-VM bench pairs=%ld ns_per_pair=%lld\n", n, n ? elapsed / n : 0);
		return 0;
	}
	fprintf(stderr, "probe: unknown mode %s\n", mode);
	return 2;
}

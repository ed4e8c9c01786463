// PM2 entry for idlesync, beside the web app. Merge the apps into the web app's own
// ecosystem.config.js `apps` array, or run it alone:
//   pm2 start deploy/ecosystem.config.js && pm2 save
//
// idlesync is a native binary: `interpreter: "none"`. PM2 stops it with SIGINT; idlesync then
// leaves IDLE, logs out (and in cluster mode releases its leases) and exits within 10 s, so
// `kill_timeout` leaves it 15 s before SIGKILL. Keep secrets out of this file: use
// password_file / password_command in the config, or export the password_env variables in the
// environment PM2 is started from.
//
// Single node (the default, no [cluster]): one app, one process. Two processes on one config
// would each hold every IDLE connection.
//
// Cluster mode ([cluster] enabled = true, PostgreSQL storage): set REPLICAS below. Each replica
// is its own app, not `exec_mode: "cluster"` / `instances: N` of one app: every replica needs its
// own admin port, and the config has no per-process override. So each starts from its own copy
// of the shared file, written by deploy/systemd/instance-config with `[metrics] listen` moved to
// its port (leave `[cluster] node_id` out: the default, host name and pid, differs per process).
// After editing the shared file, write the copies again; each replica's file watch reloads:
//   for p in 9898 9899 9900; do instance-config $p /etc/idlesync/idlesync.toml /var/lib/idlesync/$p.toml; done
const REPLICAS = 1;
const FIRST_PORT = 9898;

const common = {
  interpreter: "none",
  exec_mode: "fork",
  instances: 1,
  autorestart: true,
  // Restart delays grow from 1 s (reset after 30 s of uptime), like a crash loop should.
  exp_backoff_restart_delay: 1000,
  // An invalid config exits 2: don't restart it forever, `pm2 logs idlesync` shows why.
  stop_exit_codes: [2],
  kill_timeout: 15000,
  time: false, // JSON log lines carry their own timestamp
  merge_logs: true,
  env: {
    RUST_LOG: "info",
  },
};

const single = {
  ...common,
  name: "idlesync",
  script: "/usr/local/bin/idlesync",
  args: ["--log-format", "json", "run", "--config", "/etc/idlesync/idlesync.toml"],
};

// `exec`, so PM2's SIGINT reaches idlesync itself.
const replica = (port) => ({
  ...common,
  name: `idlesync-${port}`,
  script: "/bin/sh",
  args: [
    "-c",
    `/usr/local/lib/idlesync/instance-config ${port} /etc/idlesync/idlesync.toml /var/lib/idlesync/${port}.toml ` +
      `&& exec /usr/local/bin/idlesync --log-format json run --config /var/lib/idlesync/${port}.toml`,
  ],
});

module.exports = {
  apps:
    REPLICAS === 1
      ? [single]
      : Array.from({ length: REPLICAS }, (_, i) => replica(FIRST_PORT + i)),
};

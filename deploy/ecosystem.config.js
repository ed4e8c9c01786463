// PM2 entry for idlesync, beside the web app. Merge the object into the web app's own
// ecosystem.config.js `apps` array, or run it alone:
//   pm2 start deploy/ecosystem.config.js && pm2 save
//
// idlesync is a native binary: `interpreter: "none"`. PM2 stops it with SIGINT; idlesync then
// leaves IDLE, logs out and exits within 10 s, so `kill_timeout` leaves it 15 s before SIGKILL.
// Keep secrets out of this file: use password_file / password_command in the config, or export
// the password_env variables in the environment PM2 is started from.
module.exports = {
  apps: [
    {
      name: "idlesync",
      script: "/usr/local/bin/idlesync",
      args: ["--log-format", "json", "run", "--config", "/etc/idlesync/idlesync.toml"],
      interpreter: "none",
      exec_mode: "fork",
      instances: 1, // one daemon per config: two would hold every IDLE connection twice
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
    },
  ],
};

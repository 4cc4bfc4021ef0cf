"""The web console: server-rendered pages over the control plane's read functions, served by
`tollgate-control` under /console (control.console.routes), behind the admin token kept in an
HttpOnly cookie (control.console.auth)."""

module periscope/go_https_server

go 1.19

module periscope/go_https_client

go 1.19

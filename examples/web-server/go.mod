module example.com/web-server

go 1.21

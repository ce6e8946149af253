module steward.local/pause

go 1.22

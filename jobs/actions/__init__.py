"""What callers do to jobs: submit one (`submit`) or a batch (`batches`), control one (`control`)
or a batch (`batch_control`), jobs that wait for a batch (`batch_deps`), and bulk actions by
filter (`bulk`).
"""
